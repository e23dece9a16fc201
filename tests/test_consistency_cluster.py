"""Every subscriber's view equals the event log, whatever the interleaving (hypothesis).

Two real processes on PostgreSQL and Redis: gateway A runs the executors, gateway B
(`--no-executors`) only serves. Hypothesis draws a sequence of operations, each through
A or B: reprocess a data source (runs concurrently with what follows), add a
DataSourceNode naming a source, remove it, re-point it, subscribe (live, `snapshot`,
`afterSequence: 0`, both). When everything has settled, each subscriber's items must be
exactly what the log implies for its kind of subscription (bench/logcheck.py): right state
at each sequence, sequences never going down, nothing missed, current at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.logcheck import NodeEvent, mismatch
from storage import queries
from storage.db import Database
from storage.work_requests import WorkRequest
from tests.cluster import Cluster
from tests.conftest import need_server
from tests.helpers import async_wait_until
from tests.log_helpers import log_rows, node_log
from tests.wsclient import RawClient

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

WATCH = """subscription($p: Int!, $after: Int, $snapshot: Boolean) {
  nodeExecutionStatusChanged(projectId: $p, afterSequence: $after, snapshot: $snapshot) {
    nodeId sequence
    datasourceExecution { dataSourceId filename status processedAt executionState errorMessage }
    graphExecution { graphId nodeCount edgeCount executionState computedDate errorMessage }
  } }"""
NODE = (
    "mutation($p: Int!, $n: PlanDagNodeInput!) { addPlanDagNode(projectId: $p, node: $n) { id } }"
)
UPDATE = (
    "mutation($p: Int!, $id: String!, $n: PlanDagNodeInput!) "
    "{ updatePlanDagNode(projectId: $p, nodeId: $id, node: $n) { id } }"
)
DELETE = "mutation($p: Int!, $id: String!) { deletePlanDagNode(projectId: $p, nodeId: $id) }"
REPROCESS = "mutation($i: Int!) { reprocessDataSource(id: $i) { id } }"
SOURCE = "mutation($i: CreateDataSourceInput!) { createDataSource(input: $i) { id } }"
MODES = {  # subscription variables of each kind of watcher
    "live": {},
    "snapshot": {"snapshot": True},
    "after0": {"after": 0},
    "snapshot+after0": {"after": 0, "snapshot": True},
}

gateway_index = st.integers(0, 1)
operation = st.one_of(
    st.tuples(st.just("reprocess"), st.integers(0, 1), gateway_index),
    st.tuples(st.just("add"), st.integers(0, 2), st.integers(0, 1), gateway_index),
    st.tuples(st.just("remove"), st.integers(0, 2), gateway_index),
    st.tuples(st.just("repoint"), st.integers(0, 2), st.integers(0, 1), gateway_index),
    st.tuples(st.just("subscribe"), st.sampled_from(sorted(MODES)), gateway_index),
)


@pytest.fixture
def db(pg_url: str) -> Iterator[Database]:
    need_server("Redis", "127.0.0.1", 6379)
    database = Database(pg_url)
    database.create_schema()  # before the processes start: they would race to create it
    yield database
    database.dispose()


@pytest.fixture
def gateways(pg_url: str, db: Database, tmp_path: Path) -> Iterator[list[str]]:
    cluster = Cluster(pg_url, tmp_path)
    try:
        a, b = cluster.gateway(executors=True), cluster.gateway()
        cluster.wait_ready(a, b)
        yield [a.url, b.url]
    finally:
        cluster.close()


@dataclass
class Watcher:
    mode: str
    client: RawClient
    items: list[NodeEvent] = field(default_factory=list)
    errors: list[Any] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def collect(self) -> None:
        while True:
            message = await self.client.recv(timeout=3600)
            if message["type"] != "next":
                self.errors.append(message)
                continue
            event = message["payload"]["data"]["nodeExecutionStatusChanged"]
            execution = event["datasourceExecution"] or event["graphExecution"]
            self.items.append((event["sequence"], event["nodeId"], execution))


def settled(db: Database, pid: int) -> bool:
    """No request waiting or running, no data source still on its way."""
    with db.read() as s:
        if s.query(WorkRequest).filter_by(project_id=pid).count():
            return False
        states = {d.execution_state for d in queries.list_data_sources(s, pid)}
    return states <= {"completed", "error"}


async def run_example(urls: list[str], db: Database, operations: list[tuple[Any, ...]]) -> None:
    clients = [await RawClient.open(url) for url in urls]
    watchers: list[Watcher] = []
    try:
        for c in clients:
            await c.init()

        async def call(gateway: int, query: str, **variables: Any) -> Any:
            return await clients[gateway].execute(query, variables)

        created = await call(0, 'mutation { createProject(input: {name: "prop"}) { id } }')
        pid = created["data"]["createProject"]["id"]
        sources = []
        for name in ("a", "b"):
            made = await call(
                0,
                SOURCE,
                i={
                    "projectId": pid,
                    "name": name,
                    "filename": f"{name}.csv",
                    "fileFormat": "csv",
                    "dataType": "nodes",
                    "content": "id,label\nx,X\n",
                },
            )
            sources.append(made["data"]["createDataSource"]["id"])
        for op in operations:
            kind, gateway = op[0], op[-1]
            if kind == "reprocess":
                await call(gateway, REPROCESS, i=sources[op[1]])
            elif kind in ("add", "repoint"):
                node = {"nodeType": "DataSourceNode", "config": {"dataSourceId": sources[op[2]]}}
                if kind == "add":
                    await call(gateway, NODE, p=pid, n={**node, "id": f"n{op[1]}"})
                else:
                    await call(gateway, UPDATE, p=pid, id=f"n{op[1]}", n=node)
            elif kind == "remove":
                await call(gateway, DELETE, p=pid, id=f"n{op[1]}")
            else:
                watcher = Watcher(op[1], await RawClient.open(urls[gateway]))
                await watcher.client.init()
                await watcher.client.subscribe("w", WATCH, {"p": pid, **MODES[op[1]]})
                watcher.task = asyncio.ensure_future(watcher.collect())
                watchers.append(watcher)
        await async_wait_until(lambda: settled(db, pid), timeout=30, what="the runs to end")

        def verdicts() -> list[str | None]:
            log, resets = node_log(log_rows(db, pid))
            return [
                mismatch(
                    log,
                    w.items,
                    after=MODES[w.mode].get("after"),
                    snapshot=w.mode == "snapshot",
                    resets=resets,
                )
                for w in watchers
            ]

        with contextlib.suppress(AssertionError):  # a last delivery may still be on its way
            await async_wait_until(lambda: not any(verdicts()), timeout=10)
        problems = [(w.mode, v) for w, v in zip(watchers, verdicts(), strict=True) if v]
        assert problems == [], f"operations {operations}: {problems}"
        assert all(w.errors == [] for w in watchers), [w.errors for w in watchers]
    finally:
        for watcher in watchers:
            if watcher.task is not None:
                watcher.task.cancel()
            await watcher.client.close()
        for c in clients:
            await c.close()


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(operations=st.lists(operation, min_size=6, max_size=16))
def test_every_subscribers_view_equals_the_log(
    gateways: list[str], db: Database, operations: list[tuple[Any, ...]]
) -> None:
    # Every example its own project on the same two processes (starting them is the cost).
    asyncio.run(run_example(gateways, db, operations))
