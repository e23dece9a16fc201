"""A live badge, end to end: a data source is created on one connection and every watcher,
subscribed with the frontend's verbatim document over a real client, sees it go
processing → completed (or error)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.helpers import (
    NODES_CSV,
    VERBATIM_SUBSCRIPTION,
    async_wait_until,
    client,
    request,
    subscriber_count,
)

CREATE_PROJECT = "mutation($name: String!) { createProject(input: {name: $name}) { id name } }"
CREATE_SOURCE = """
mutation($input: CreateDataSourceInput!) {
  createDataSource(input: $input) { id status executionState }
}
"""


async def _watch(url: str, project_id: int, count: int, into: list[dict[str, Any]]) -> None:
    async with client(url) as session:
        async for result in session.subscribe(request(VERBATIM_SUBSCRIPTION, projectId=project_id)):
            into.append(result["nodeExecutionStatusChanged"])
            if len(into) == count:
                return


async def _scenario(server: Any, content: str, file_format: str = "csv") -> list[list[dict]]:
    async with client(server.url) as admin:
        project = (await admin.execute(request(CREATE_PROJECT, name="badges")))["createProject"]
        pid = int(project["id"])
        seen: list[list[dict[str, Any]]] = [[], []]
        watchers = [asyncio.create_task(_watch(server.url, pid, 2, seen[i])) for i in (0, 1)]
        await async_wait_until(
            lambda: subscriber_count(server, pid) == 2 or any(w.done() for w in watchers),
            what="both watchers subscribed",
        )
        created = await admin.execute(
            request(
                CREATE_SOURCE,
                input={
                    "projectId": pid,
                    "name": "Services",
                    "filename": f"services.{file_format}",
                    "fileFormat": file_format,
                    "dataType": "nodes",
                    "content": content,
                },
            )
        )
        assert created["createDataSource"]["status"] == "processing"
        await asyncio.wait_for(asyncio.gather(*watchers), timeout=20)
    return seen


def test_two_watchers_see_processing_then_completed(server: Any) -> None:
    seen = server.call(asyncio.wait_for(_scenario(server, NODES_CSV), 30), timeout=40)
    first, second = seen
    assert first == second, "both watchers see the same events in the same order"
    states = [e["datasourceExecution"]["executionState"] for e in first]
    assert states == ["processing", "completed"]
    done = first[1]
    assert done["nodeType"] == "DataSourceNode"
    assert done["nodeId"].startswith("datasource_")
    assert done["datasourceExecution"]["status"] == "active"
    assert done["datasourceExecution"]["processedAt"].endswith("Z")
    assert done["datasourceExecution"]["filename"] == "services.csv"
    assert done["graphExecution"] is None
    assert done["timestamp"].endswith("Z")


def test_bad_file_ends_in_error_with_its_reason(server: Any) -> None:
    seen = server.call(asyncio.wait_for(_scenario(server, "id,name\n1,a\n"), 30), timeout=40)
    states = [e["datasourceExecution"]["executionState"] for e in seen[0]]
    assert states == ["processing", "error"]
    failed = seen[0][1]["datasourceExecution"]
    assert failed["status"] == "error"
    assert "label" in failed["errorMessage"]
