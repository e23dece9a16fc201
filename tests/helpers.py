"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from gql import Client, GraphQLRequest, gql
from gql.transport.websockets import WebsocketsTransport

VERBATIM_SUBSCRIPTION = """
subscription NodeExecutionStatusChanged($projectId: Int!) {
  nodeExecutionStatusChanged(projectId: $projectId) {
    projectId
    nodeId
    nodeType
    datasourceExecution { dataSourceId filename status processedAt executionState errorMessage }
    graphExecution { graphId nodeCount edgeCount executionState computedDate errorMessage }
    timestamp
  }
}
"""

NODES_CSV = "id,label,layer\nweb,Web frontend,app\napi,API,app\ndb,Database,data\n"


def request(query: str, **variables: Any) -> GraphQLRequest:
    return GraphQLRequest(gql(query).document, variable_values=variables or None)


def client(url: str, init_payload: dict[str, Any] | None = None) -> Client:
    transport = WebsocketsTransport(
        url=url,
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
        init_payload=init_payload or {},
    )
    return Client(transport=transport, fetch_schema_from_transport=False)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll until `predicate()` is truthy: tests wait for a state, never for a duration."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.01)


async def async_wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.01)


def subscriber_count(server: Any, project_id: int) -> int:
    stats = server.app.hub.ask(project_id, "stats")
    return stats["subscribers"] if stats else 0
