"""The whole plan over the socket with a real client: editing, execution, queries, demo."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from gql.transport.exceptions import TransportQueryError

from tests.helpers import async_wait_until, client, request, subscriber_count
from tests.plan_helpers import SERVICES

ROOT = Path(__file__).resolve().parent.parent
WATCH = """subscription($projectId: Int!) { nodeExecutionStatusChanged(projectId: $projectId) {
  nodeId nodeType sequence
  datasourceExecution { dataSourceId executionState }
  graphExecution { nodeCount edgeCount executionState errorMessage } } }"""


async def _make(session: Any, query: str, **variables: Any) -> Any:
    return await session.execute(request(query, **variables))


async def _source(session: Any, pid: int, name: str, content: str = SERVICES) -> dict[str, Any]:
    created = await _make(
        session,
        "mutation($i: CreateDataSourceInput!) { createDataSource(input: $i) { id } }",
        i={
            "projectId": pid,
            "name": name,
            "filename": f"{name}.csv",
            "fileFormat": "csv",
            "dataType": "nodes",
            "content": content,
        },
    )
    return created["createDataSource"]


class Watcher:
    def __init__(self, server: Any, pid: int) -> None:
        self.server, self.pid = server, pid
        self.events: list[dict[str, Any]] = []
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watcher:
        async def watch() -> None:
            async with client(self.server.url) as session:
                async for result in session.subscribe(request(WATCH, projectId=self.pid)):
                    self.events.append(result["nodeExecutionStatusChanged"])

        self.task = asyncio.create_task(watch())
        await async_wait_until(lambda: subscriber_count(self.server, self.pid) == 1)
        return self

    async def __aexit__(self, *_exc: Any) -> None:
        assert self.task is not None
        self.task.cancel()

    def states(self, node_id: str) -> list[str]:
        return [
            (e["datasourceExecution"] or e["graphExecution"])["executionState"]
            for e in self.events
            if e["nodeId"] == node_id
        ]

    async def until(self, node_id: str, *states: str) -> None:
        await async_wait_until(
            lambda: self.states(node_id)[-len(states) :] == list(states),
            what=f"{node_id} reaching {states}",
        )


def test_plan_runs_live_through_the_socket(server: Any) -> None:
    async def scenario() -> None:
        async with client(server.url) as admin:
            pid = (await _make(admin, 'mutation { createProject(input: {name: "p"}) { id } }'))[
                "createProject"
            ]["id"]
            async with Watcher(server, pid) as watcher:
                source = await _source(admin, pid, "services")
                node = f"datasource_{source['id']}"
                await watcher.until(node, "processing", "completed")
                await _make(
                    admin,
                    "mutation($p: Int!, $n: PlanDagNodeInput!) "
                    "{ addPlanDagNode(projectId: $p, node: $n) { id executionState } }",
                    p=pid,
                    n={"id": "graph", "nodeType": "GraphNode", "config": {}},
                )
                await _make(
                    admin,
                    "mutation($p: Int!, $e: PlanDagEdgeInput!) "
                    "{ addPlanDagEdge(projectId: $p, edge: $e) { id } }",
                    p=pid,
                    e={"source": node, "target": "graph"},
                )
                ran = await _make(
                    admin,
                    'mutation($p: Int!) { executeNode(projectId: $p, nodeId: "graph") }',
                    p=pid,
                )
                assert ran == {"executeNode": True}
                await watcher.until("graph", "pending", "processing", "completed")
                done = [e for e in watcher.events if e["nodeId"] == "graph"][-1]
                assert done["nodeType"] == "GraphNode"
                assert done["graphExecution"]["nodeCount"] == 4
                assert done["datasourceExecution"] is None

            dag = await _make(
                admin,
                "query($p: Int!) { planDag(projectId: $p) { nodes { id executionState } "
                "edges { source target } } graphs(projectId: $p) { nodeId nodeCount } "
                "executionEvents(projectId: $p, limit: 3) { sequence nodeId } }",
                p=pid,
            )
            states = {n["id"]: n["executionState"] for n in dag["planDag"]["nodes"]}
            assert states == {node: "completed", "graph": "completed"}
            assert dag["planDag"]["edges"] == [{"source": node, "target": "graph"}]
            assert dag["graphs"] == [{"nodeId": "graph", "nodeCount": 4}]
            # 1, 4, 5 are plan edits (source node, graph node, edge): in the sequence, not
            # status events; the page still holds three status events.
            assert [e["sequence"] for e in dag["executionEvents"]] == [2, 3, 6]

            await _make(
                admin,
                "mutation($p: Int!, $e: PlanDagEdgeInput!) "
                "{ addPlanDagEdge(projectId: $p, edge: $e) { id } }",
                p=pid,
                e={"source": "graph", "target": node},
            )
            with pytest.raises(TransportQueryError) as refused:
                await _make(admin, "mutation($p: Int!) { executePlan(projectId: $p) }", p=pid)
            error = refused.value.errors[0]
            assert error["extensions"]["code"] == "PLAN_REFUSED"
            assert error["message"] == (
                f"the plan has a cycle (graph → {node} → graph): "
                "remove one of these edges and run it again"
            )
            stopped = await _make(
                admin, "mutation($p: Int!) { stopPlanExecution(projectId: $p) }", p=pid
            )
            assert stopped == {"stopPlanExecution": False}  # nothing was running

    server.call(asyncio.wait_for(scenario(), 60), timeout=70)


def test_editing_a_node_changes_the_nodes_of_the_very_next_event(server: Any) -> None:
    """A DataSourceNode re-pointed to another data source: the edit is logged, and with it
    the new source's current state for the node; the next event of the old source no
    longer names it, the new source's does (each change carries its resolved nodes)."""

    async def scenario() -> None:
        async with client(server.url) as admin:
            pid = (await _make(admin, 'mutation { createProject(input: {name: "p"}) { id } }'))[
                "createProject"
            ]["id"]
            a = (await _source(admin, pid, "a"))["id"]
            b = (await _source(admin, pid, "b"))["id"]
            await _make(
                admin,
                "mutation($p: Int!, $n: PlanDagNodeInput!) "
                "{ addPlanDagNode(projectId: $p, node: $n) { id } }",
                p=pid,
                n={"id": "view", "nodeType": "DataSourceNode", "config": {"dataSourceId": a}},
            )
            async with Watcher(server, pid) as watcher:
                reprocess = "mutation($i: Int!) { reprocessDataSource(id: $i) { id } }"
                await _make(admin, reprocess, i=a)
                await watcher.until("view", "processing", "completed")
                seen = len(watcher.events)
                await _make(
                    admin,
                    "mutation($p: Int!, $n: PlanDagNodeInput!) "
                    '{ updatePlanDagNode(projectId: $p, nodeId: "view", node: $n) { id } }',
                    p=pid,
                    n={"nodeType": "DataSourceNode", "config": {"dataSourceId": b}},
                )
                await _make(admin, reprocess, i=a)
                await watcher.until(f"datasource_{a}", "processing", "completed")
                await _make(admin, reprocess, i=b)
                await watcher.until(f"datasource_{b}", "processing", "completed")
                await watcher.until("view", "processing", "completed")
                after = [e for e in watcher.events[seen:] if e["nodeId"] == "view"]
                # b's state announced with the edit, then b's processing and completed.
                assert [e["datasourceExecution"]["dataSourceId"] for e in after] == [b, b, b]
                states = [e["datasourceExecution"]["executionState"] for e in after]
                assert states == ["completed", "processing", "completed"]
                # A label edit keeps the node on b: nothing is announced for it.
                seen = len(watcher.events)
                await _make(
                    admin,
                    "mutation($p: Int!, $n: PlanDagNodeInput!) "
                    '{ updatePlanDagNode(projectId: $p, nodeId: "view", node: $n) { id } }',
                    p=pid,
                    n={
                        "nodeType": "DataSourceNode",
                        "config": {"dataSourceId": b},
                        "metadata": {"label": "renamed"},
                    },
                )
                await _make(admin, reprocess, i=b)

                def of(node_id: str) -> list[dict[str, Any]]:
                    return [e for e in watcher.events[seen:] if e["nodeId"] == node_id]

                await async_wait_until(lambda: len(of(f"datasource_{b}")) == 2, what="b's run")
                b_done = of(f"datasource_{b}")[-1]["sequence"]
                await async_wait_until(
                    lambda: any(e["sequence"] == b_done for e in of("view")),
                    what="view's completed",
                )
                after = [e for e in watcher.events[seen:] if e["nodeId"] == "view"]
                assert [e["datasourceExecution"]["executionState"] for e in after] == [
                    "processing",
                    "completed",
                ]

    server.call(asyncio.wait_for(scenario(), 60), timeout=70)


def test_demo_loads_the_sample_and_runs_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "run.py",
            "demo",
            "--exit",
            "--port",
            "0",
            "--database-url",
            f"sqlite:///{tmp_path / 'demo.db'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "service_map        GraphNode       completed    16 nodes, 19 edges" in out
    assert out.count("completed") >= 8
    assert "watch it live: http://127.0.0.1:" in out
