"""Past one machine: gateway and worker processes on PostgreSQL and Redis.

Real `run.py serve --no-executors` and `run.py worker` processes, real Redis pub/sub, a real
PostgreSQL database, real graphql-transport-ws clients. Tests wait for states (a log line,
/healthz, a row, an event), never for a duration.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.bus import InProcessBus
from actors.events import node_events
from actors.state import StateStore, message_from_row
from actors.work_queue import WorkQueue
from storage import queries
from storage.db import Database
from storage.work_requests import WorkRequest
from tests.cluster import Cluster
from tests.conftest import need_server
from tests.helpers import async_wait_until, client, request, wait_until
from tests.plan_helpers import CALLS, SERVICES, add_node, add_source, assert_legal, states_by_node

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

SUBSCRIPTION = """
subscription($projectId: Int!) {
  nodeExecutionStatusChanged(projectId: $projectId, afterSequence: 0) {
    nodeId
    sequence
    datasourceExecution { executionState }
    graphExecution { executionState }
  }
}
"""


@pytest.fixture
def db(pg_url: str) -> Iterator[Database]:
    need_server("Redis", "127.0.0.1", 6379)
    database = Database(pg_url)
    database.create_schema()  # before the processes start: they would race to create it
    yield database
    database.dispose()


@pytest.fixture
def cluster(pg_url: str, db: Database, tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(pg_url, tmp_path)
    try:
        yield running
    finally:
        running.close()


def build_plan(db: Database) -> tuple[int, list[str]]:
    """services + calls → graph → apps (transform) → out: five nodes."""
    with db.write() as s:
        pid = queries.create_project(s, "multiprocess").id
    nodes = add_source(db, pid, "services", SERVICES)
    edges = add_source(db, pid, "calls", CALLS, data_type="edges")
    add_node(db, pid, "graph", "GraphNode", nodes, edges)
    add_node(
        db,
        pid,
        "apps",
        "TransformNode",
        "graph",
        config={"transforms": [{"kind": "keep_layers", "params": {"layers": ["app"]}}]},
    )
    add_node(db, pid, "out", "OutputNode", "apps")
    return pid, [nodes, edges, "graph", "apps", "out"]


def node_state(db: Database, pid: int, node_id: str) -> str:
    with db.read() as s:
        node = queries.get_node(s, pid, node_id)
        assert node is not None
        if node.node_type == "DataSourceNode":
            return queries.require_data_source(s, node.config["dataSourceId"]).execution_state
        graph = queries.get_graph_by_node(s, pid, node_id)
        return graph.execution_state if graph is not None else "not_started"


def run_over(db: Database, pid: int, node_ids: list[str]) -> bool:
    """The run's request is done and every node ended (completed or error)."""
    with db.read() as s:
        if s.query(WorkRequest).filter_by(project_id=pid).count():
            return False
    return all(node_state(db, pid, n) in ("completed", "error") for n in node_ids)


def logged_events(db: Database, pid: int) -> list[tuple[int, str, str]]:
    """Every event of the project, from the log: (sequence, node id, state), in order."""
    with db.read() as s:
        rows = queries.events_after(s, pid, 0)
    events = []
    for row in rows:
        for event in node_events(message_from_row(row)):
            execution = event["datasourceExecution"] or event["graphExecution"]
            events.append((event["sequence"], event["nodeId"], execution["executionState"]))
    return events


def as_tuple(event: dict[str, Any]) -> tuple[int, str, str]:
    execution = event["datasourceExecution"] or event["graphExecution"]
    return event["sequence"], event["nodeId"], execution["executionState"]


async def collect(url: str, pid: int, into: list[tuple[int, str, str]]) -> None:
    async with client(url) as session:
        async for result in session.subscribe(request(SUBSCRIPTION, projectId=pid)):
            into.append(as_tuple(result["nodeExecutionStatusChanged"]))


# --- two gateways, one worker -------------------------------------------------------------


@pytest.mark.parametrize("loss", ["none", "lossy"])
def test_every_event_once_in_order_on_both_gateways(
    cluster: Cluster, db: Database, tmp_path: Path, loss: str
) -> None:
    """A plan run by the worker reaches a client on each gateway whole, in order, once.

    "lossy": the worker does not publish every 3rd change (as if pub/sub lost it), and in
    the middle of the run the gateways' pub/sub connections are killed, so whatever was
    published while they reconnect is lost too: the gateways fill it all from the log.
    """
    pid, node_ids = build_plan(db)
    release = tmp_path / "release"
    env = {}
    if loss == "lossy":
        env = {
            "PLANPULSE_TEST_DROP_PUBLISH": "3",
            "PLANPULSE_TEST_PAUSE_NODE": "graph",
            "PLANPULSE_TEST_RELEASE_FILE": str(release),
        }
    gateways = [cluster.gateway(), cluster.gateway()]
    worker = cluster.worker(env)
    cluster.wait_ready(*gateways, worker)

    seen: list[list[tuple[int, str, str]]] = [[], []]

    async def scenario() -> None:
        watchers = [
            asyncio.ensure_future(collect(g.url, pid, seen[i])) for i, g in enumerate(gateways)
        ]
        try:
            async with client(gateways[1].url) as admin:
                await admin.execute(
                    request("mutation($p: Int!) { executePlan(projectId: $p) }", p=pid)
                )
            if loss == "lossy":
                await async_wait_until(
                    lambda: all(
                        (n, "processing") in {(e[1], e[2]) for e in s}
                        for s in seen
                        for n in ["graph"]
                    ),
                    timeout=20,
                    what="both clients see graph processing",
                )
                assert await asyncio.to_thread(cluster.kill_pubsub_connections) >= 2
                release.touch()
            await async_wait_until(
                lambda: run_over(db, pid, node_ids), timeout=30, what="the run to end"
            )
            expected = await asyncio.to_thread(logged_events, db, pid)
            await async_wait_until(
                lambda: all(len(s) >= len(expected) for s in seen),
                timeout=20,
                what=f"{len(expected)} events on both gateways",
            )
            for got in seen:
                assert got == expected
        finally:
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

    asyncio.run(scenario())
    assert {node_state(db, pid, n) for n in node_ids} == {"completed"}
    assert "took request" in worker.output()
    if loss == "lossy":
        assert "dropped sequence" in worker.output()
        assert all(
            "reconnected" in g.output() or "lost the connection" in g.output() for g in gateways
        )


def test_an_edit_through_one_gateway_changes_the_nodes_of_events_on_the_other(
    cluster: Cluster, db: Database
) -> None:
    """A node added through gateway A: the events after the edit name it, on gateway B too,
    because each carries the nodes resolved when it was persisted (B keeps no map)."""
    a, b = cluster.gateway(), cluster.gateway()
    worker = cluster.worker()
    cluster.wait_ready(a, b, worker)
    seen: list[tuple[int, str, str]] = []

    async def scenario() -> None:
        async with client(a.url) as admin:
            created = await admin.execute(
                request('mutation { createProject(input: {name: "re-resolve"}) { id } }')
            )
            pid = created["createProject"]["id"]
            watcher = asyncio.ensure_future(collect(b.url, pid, seen))
            try:
                source = await admin.execute(
                    request(
                        "mutation($i: CreateDataSourceInput!) "
                        "{ createDataSource(input: $i) { id } }",
                        i={
                            "projectId": pid,
                            "name": "services",
                            "filename": "services.csv",
                            "fileFormat": "csv",
                            "dataType": "nodes",
                            "content": SERVICES,
                        },
                    )
                )
                source_id = source["createDataSource"]["id"]
                first = f"datasource_{source_id}"
                await async_wait_until(
                    lambda: (first, "completed") in {(e[1], e[2]) for e in seen},
                    what="B delivered the first processing (a map kept by B would now be stale)",
                )
                await admin.execute(
                    request(
                        "mutation($p: Int!, $n: PlanDagNodeInput!) "
                        "{ addPlanDagNode(projectId: $p, node: $n) { id } }",
                        p=pid,
                        n={
                            "id": "alias",
                            "nodeType": "DataSourceNode",
                            "config": {"dataSourceId": source_id},
                        },
                    )
                )
                await admin.execute(
                    request(
                        "mutation($i: Int!) { reprocessDataSource(id: $i) { id } }", i=source_id
                    )
                )
                await async_wait_until(
                    lambda: (
                        [e[2] for e in seen if e[1] == "alias"]
                        == ["completed", "processing", "completed"]
                    ),
                    timeout=20,
                    what="B delivered the announced state and the reprocessing to the new node",
                )
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
        # 1: the source's node added; 2, 3: its processing, to that node only; 4: "alias"
        # added; 5: the source's state announced to both; 6, 7: reprocessing, to both.
        expected = await asyncio.to_thread(logged_events, db, pid)
        assert seen == expected
        assert [e[0] for e in seen] == [2, 3, 5, 5, 6, 6, 7, 7]
        assert sorted(e[1] for e in seen[2:]) == ["alias"] * 3 + [first] * 3

    asyncio.run(scenario())


# --- a worker that dies mid-run -----------------------------------------------------------


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_dead_workers_request_is_claimed_by_another(
    cluster: Cluster, db: Database, how: str
) -> None:
    """The worker holding the run dies with `graph` in processing; a second worker claims
    the request and the run ends with every node completed, none stuck."""
    pid, node_ids = build_plan(db)
    first = cluster.worker({"PLANPULSE_TEST_PAUSE_NODE": "graph"}, "--grace", "0.2")
    cluster.wait_ready(first)
    WorkQueue(StateStore(db), InProcessBus()).run_plan(pid)
    wait_until(
        lambda: node_state(db, pid, "graph") == "processing",
        timeout=20,
        what="graph in processing on the first worker",
    )
    first.signal(getattr(signal, how))
    code = first.wait()
    if how == "SIGTERM":
        assert code == 0, first.output()
        assert "gave back request" in first.output()

    second = cluster.worker()
    cluster.wait_ready(second)
    wait_until(lambda: run_over(db, pid, node_ids), timeout=30, what="the second worker's run")
    assert {node_state(db, pid, n) for n in node_ids} == {"completed"}
    states = states_by_node(db, pid)
    assert_legal(states)
    assert states["graph"] == [
        "pending",
        "processing",  # on the first worker, which died there
        "not_started",  # settled by the second worker: "interrupted: … running it again"
        "pending",
        "processing",
        "completed",
    ]
    assert "attempt 2" in second.output()


def test_a_stop_reaches_the_worker_running_the_plan(
    cluster: Cluster, db: Database, tmp_path: Path
) -> None:
    pid, node_ids = build_plan(db)
    release = tmp_path / "release"
    worker = cluster.worker(
        {"PLANPULSE_TEST_PAUSE_NODE": "graph", "PLANPULSE_TEST_RELEASE_FILE": str(release)}
    )
    cluster.wait_ready(worker)
    queue = WorkQueue(StateStore(db), InProcessBus())
    assert queue.stop_plan(pid) is False  # nothing to stop yet
    queue.run_plan(pid)
    wait_until(lambda: node_state(db, pid, "graph") == "processing", timeout=20)
    assert queue.stop_plan(pid) is True
    wait_until(
        lambda: {node_state(db, pid, n) for n in ("graph", "apps", "out")} == {"not_started"},
        what="the run stopped",
    )
    release.touch()
    wait_until(lambda: _requests_of(db, pid) == 0, what="the stopped run's request done")
    states = states_by_node(db, pid)
    assert_legal(states)
    assert states["graph"] == ["pending", "processing", "not_started"]
    assert states["out"] == ["pending", "not_started"]
    assert "stopping request" in worker.output()


def _requests_of(db: Database, pid: int) -> int:
    with db.read() as s:
        return s.query(WorkRequest).filter_by(project_id=pid).count()


# --- sequences from several processes -----------------------------------------------------


def _write_changes(
    database_url: str, data_source_id: int, count: int, ready: Any, start: Any, results: Any
) -> None:
    """In a process of its own: `count` state changes, each its own transaction, all
    processes starting together."""
    db = Database(database_url)
    store = StateStore(db)
    try:
        ready.put(data_source_id)
        start.wait(30)
        sequences = []
        for i in range(count):
            if i % 2:
                change = store.data_source_completed(data_source_id, {"nodes": [], "edges": []})
            else:
                change = store.data_source_processing(data_source_id)
            sequences.append(change.sequence)
        results.put(sequences)
    finally:
        db.dispose()


def test_concurrent_writers_in_several_processes_get_gap_free_sequences(
    pg_url: str, db: Database
) -> None:
    with db.write() as s:
        pid = queries.create_project(s, "sequences").id
    sources = [add_source(db, pid, f"s{i}", SERVICES) for i in range(4)]
    with db.read() as s:
        source_ids = [queries.get_node(s, pid, n).config["dataSourceId"] for n in sources]
    per_process = 40
    context = multiprocessing.get_context("spawn")
    ready, results, start = context.Queue(), context.Queue(), context.Event()
    writers = [
        context.Process(
            target=_write_changes, args=(pg_url, sid, per_process, ready, start, results)
        )
        for sid in source_ids
    ]
    try:
        for writer in writers:
            writer.start()
        for _ in writers:
            ready.get(timeout=30)
        start.set()
        per_writer = [results.get(timeout=30) for _ in writers]
    finally:
        for writer in writers:
            writer.join(10)
            if writer.is_alive():
                writer.kill()
    for sequences in per_writer:
        assert sequences == sorted(sequences) and len(set(sequences)) == per_process
    total = per_process * len(writers)
    assert sorted(n for sequences in per_writer for n in sequences) == list(range(1, total + 1))
    interleaved = sum(max(seq) - min(seq) + 1 > per_process for seq in per_writer)
    assert interleaved, "the writers ran one after the other: nothing was concurrent"
    with db.read() as s:
        logged = [row.sequence for row in queries.events_after(s, pid, 0)]
        assert logged == list(range(1, total + 1))
        assert queries.last_sequence(s, pid) == total
