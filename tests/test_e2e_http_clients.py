"""The issue's done-test: real, unmodified clients over HTTP against one planpulse server.

Apollo Client 4 (HttpLink for queries and mutations, GraphQLWsLink for subscriptions, split),
graphql-sse's client (distinct connections), and Python `gql` over HTTP (RequestsHTTPTransport
for the mutations; gql has no SSE transport, so it watches over its WebSocket transport) each
create a project and a data source and watch the frontend's nodeExecutionStatusChanged
document take the badge from processing to completed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from gql import Client
from gql.transport.requests import RequestsHTTPTransport

from tests.helpers import (
    NODES_CSV,
    VERBATIM_SUBSCRIPTION,
    client,
    request,
    subscriber_count,
    wait_until,
)
from tests.test_graphql_http_audit import node_http  # noqa: F401 - the fixture

JS_DIR = Path(__file__).parent / "js_http"
CREATE_PROJECT = "mutation($name: String!) { createProject(input: {name: $name}) { id name } }"
CREATE_SOURCE = """
mutation($input: CreateDataSourceInput!) {
  createDataSource(input: $input) { id status executionState }
}
"""


def _badges(events: list[dict[str, Any]], project_id: int) -> list[str]:
    for event in events:
        assert event["projectId"] == project_id
        assert event["nodeType"] == "DataSourceNode"
    return [e["datasourceExecution"]["executionState"] for e in events]


@pytest.mark.parametrize("mode", ["apollo", "sse"])
def test_js_clients_watch_processing_to_completed(server: Any, node_http: str, mode: str) -> None:  # noqa: F811
    stream = server.url if mode == "apollo" else f"{server.http}/graphql/stream"
    proc = subprocess.Popen(
        [node_http, str(JS_DIR / "clients.mjs"), mode, f"{server.http}/graphql", stream],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        first = proc.stdout.readline()
        assert first.startswith("SUBSCRIBED "), (first, proc.stderr.read() if proc.stderr else "")
        pid = int(first.split()[1])
        wait_until(lambda: subscriber_count(server, pid) == 1, what=f"the {mode} client subscribed")
        proc.stdin.write("GO\n")
        proc.stdin.flush()
        code = proc.wait(timeout=40)
        out = proc.stdout.read()
        err = proc.stderr.read() if proc.stderr else ""
        assert code == 0, f"clients.mjs {mode} exited {code}:\n{err}"
        events = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert _badges(events, pid) == ["processing", "completed"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_python_gql_over_http(server: Any) -> None:
    http = Client(transport=RequestsHTTPTransport(url=f"{server.http}/graphql", timeout=10))
    with http as session:
        project = session.execute(request(CREATE_PROJECT, name="gql-http"))["createProject"]
    pid = int(project["id"])

    async def watch() -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        async with client(server.url) as ws:
            async for result in ws.subscribe(request(VERBATIM_SUBSCRIPTION, projectId=pid)):
                seen.append(result["nodeExecutionStatusChanged"])
                if seen[-1]["datasourceExecution"]["executionState"] == "completed":
                    return seen
        return seen

    watching = asyncio.run_coroutine_threadsafe(asyncio.wait_for(watch(), 30), server.loop)
    wait_until(lambda: subscriber_count(server, pid) == 1 or watching.done(), what="subscribed")
    source = {
        "projectId": pid,
        "name": "Services",
        "filename": "services.csv",
        "fileFormat": "csv",
        "dataType": "nodes",
        "content": NODES_CSV,
    }
    with http as session:
        created = session.execute(request(CREATE_SOURCE, input=source))["createDataSource"]
    assert created["status"] == "processing"
    assert _badges(watching.result(timeout=40), pid) == ["processing", "completed"]
