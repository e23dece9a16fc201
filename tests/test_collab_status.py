"""Issue 15 item 1: both generations of the status document, from the same stored events."""

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

CURRENT_SUBSCRIPTION = """
subscription NodeExecutionStatusChanged($projectId: Int!) {
  nodeExecutionStatusChanged(projectId: $projectId) { projectId nodeId nodeType
    datasetExecution { dataSetId filename status processedAt executionState errorMessage }
    graphExecution { graphId nodeCount edgeCount executionState computedDate errorMessage
      annotations }
    timestamp } }
"""


def test_both_generations_of_the_status_document_see_the_same_events(server: Any) -> None:
    async def scenario() -> None:
        async with client(server.url) as admin:
            created = await admin.execute(
                request('mutation { createProject(input: {name: "p"}) { id } }')
            )
            pid = created["createProject"]["id"]
            seen: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}

            async def watch(kind: str, document: str) -> None:
                async with client(server.url) as session:
                    async for result in session.subscribe(request(document, projectId=pid)):
                        seen[kind].append(result["nodeExecutionStatusChanged"])

            tasks = [
                asyncio.create_task(watch("old", VERBATIM_SUBSCRIPTION)),
                asyncio.create_task(watch("new", CURRENT_SUBSCRIPTION)),
            ]
            await async_wait_until(lambda: subscriber_count(server, pid) == 2)
            made = await admin.execute(
                request(
                    "mutation($i: CreateDataSourceInput!) { createDataSource(input: $i) { id } }",
                    i={
                        "projectId": pid,
                        "name": "n",
                        "filename": "n.csv",
                        "fileFormat": "csv",
                        "dataType": "nodes",
                        "content": NODES_CSV,
                    },
                )
            )
            source_id = made["createDataSource"]["id"]

            def done(kind: str, key: str) -> bool:
                return any((e[key] or {}).get("executionState") == "completed" for e in seen[kind])

            await async_wait_until(lambda: done("old", "datasourceExecution"), what="old doc")
            await async_wait_until(lambda: done("new", "datasetExecution"), what="new doc")
            for task in tasks:
                task.cancel()
            old = [e["datasourceExecution"] for e in seen["old"]]
            new = [e["datasetExecution"] for e in seen["new"]]
            assert len(old) == len(new)
            for a, b in zip(old, new, strict=True):
                assert b["dataSetId"] == a["dataSourceId"] == source_id
                rest = {k: v for k, v in a.items() if k != "dataSourceId"}
                assert {k: v for k, v in b.items() if k != "dataSetId"} == rest
            assert all(e["graphExecution"] is None for e in seen["new"])

    asyncio.run(scenario())
