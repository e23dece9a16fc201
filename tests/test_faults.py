"""Redis, a worker or a gateway dies mid-run: watchers still hold the whole event log.

Real `run.py serve --no-executors` and `run.py worker` processes on PostgreSQL, and a
redis-server of the test's own (tests/test_redis_bus.py's `private_redis`), so that it
can be killed with -9 and started again without touching the shared one. The watchers
are `bench.watchers.ResumingWatcher`s, as in the fault suite (bench/faults.py): they
resubscribe with `afterSequence` whenever a subscription ends or its socket drops, and
move to the next gateway when theirs is gone. Each test waits for states (a row, an
event, /healthz), never for a duration; the one timing asserted is the issue's: /healthz
ok within 5 s of Redis coming back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.bus import InProcessBus
from actors.state import StateStore
from actors.work_queue import WorkQueue
from bench.redis_server import RedisServer
from bench.watchers import ResumingWatcher
from storage import queries
from storage.db import Database
from tests.cluster import Cluster, Process, healthz
from tests.helpers import async_wait_until
from tests.test_multiprocess import build_plan, logged_events, node_state, run_over
from tests.test_redis_bus import private_redis  # noqa: F401 - the fixture

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def db(pg_url: str) -> Iterator[Database]:
    database = Database(pg_url)
    database.create_schema()  # before the processes start: they would race to create it
    yield database
    database.dispose()


@pytest.fixture
def cluster(
    pg_url: str,
    db: Database,
    private_redis: RedisServer,  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> Iterator[Cluster]:
    running = Cluster(pg_url, tmp_path, redis_url=private_redis.url)
    try:
        yield running
    finally:
        running.close()


def log_of(db: Database, pid: int) -> list[tuple[int, str]]:
    return [(sequence, node) for sequence, node, _state in logged_events(db, pid)]


def last_sequence(db: Database, pid: int) -> int:
    with db.read() as s:
        return queries.last_sequence(s, pid)


def source_of(db: Database, pid: int, node_id: str) -> int:
    with db.read() as s:
        node = queries.get_node(s, pid, node_id)
        assert node is not None
        return int(node.config["dataSourceId"])


async def settle(watchers: list[ResumingWatcher], db: Database, pid: int) -> None:
    """Wait until every watcher holds the log's last sequence, then check each one."""
    last = await asyncio.to_thread(last_sequence, db, pid)
    await async_wait_until(
        lambda: all(w.last_sequence >= last for w in watchers),
        timeout=20,
        what=f"every watcher at sequence {last}: {[w.last_sequence for w in watchers]}",
    )
    log = await asyncio.to_thread(log_of, db, pid)
    for watcher in watchers:
        got = watcher.compare(log, 0, last)
        assert (got.missing, got.duplicates, got.out_of_order, got.unexpected) == (0, 0, 0, 0), (
            watcher.name,
            got,
        )
        assert got.delivered == got.expected == len(log)


async def stop_all(watchers: list[ResumingWatcher]) -> None:
    await asyncio.gather(*(w.stop() for w in watchers))


def test_redis_killed_and_restarted(
    cluster: Cluster,
    db: Database,
    private_redis: RedisServer,  # noqa: F811
) -> None:
    """Redis dies with -9 while a worker keeps processing: both gateways say 503 `bus`,
    then, within 5 s of Redis being back, 200 again; the watchers, who never lost their
    sockets, get what happened meanwhile from the gateways' catch-up, once, in order."""
    pid, _nodes = build_plan(db)
    source = source_of(db, pid, _nodes[0])
    queue = WorkQueue(StateStore(db), InProcessBus())
    gateways = [cluster.gateway(), cluster.gateway()]
    worker = cluster.worker()
    cluster.wait_ready(*gateways, worker)

    async def scenario() -> None:
        watchers = [
            ResumingWatcher([g.url], pid, name=f"w{i}").start() for i, g in enumerate(gateways * 2)
        ]
        try:
            await async_wait_until(lambda: all(w.connected for w in watchers))
            queue.process_data_source(source)
            await async_wait_until(lambda: all(w.last_sequence >= 2 for w in watchers), timeout=20)
            await asyncio.to_thread(private_redis.kill)
            await async_wait_until(
                lambda: all(healthz(g.port)[0] == 503 for g in gateways),
                what="both gateways report the bus down",
            )
            queue.process_data_source(source)
            queue.process_data_source(source)
            await async_wait_until(
                lambda: last_sequence(db, pid) >= 6, timeout=20, what="processed meanwhile"
            )
            assert all(w.last_sequence == 2 for w in watchers)  # nothing could travel

            await asyncio.to_thread(private_redis.start)
            back = time.monotonic()
            await async_wait_until(
                lambda: all(healthz(g.port)[0] == 200 for g in gateways),
                timeout=10,
                what="/healthz ok on both gateways",
            )
            assert time.monotonic() - back < 5.0
            queue.process_data_source(source)  # and the worker publishes again
            await async_wait_until(lambda: last_sequence(db, pid) >= 8, timeout=20)
            await settle(watchers, db, pid)
            assert all(w.resumes == 0 for w in watchers)  # carried on, no resubscribe
        finally:
            await stop_all(watchers)

    asyncio.run(asyncio.wait_for(scenario(), 90))
    assert "publish failed" in worker.output()


def test_a_worker_killed_mid_plan_leaves_nothing_stuck(cluster: Cluster, db: Database) -> None:
    """kill -9 of the worker with `graph` in processing; once a worker runs again, the
    plan ends with every node completed and the watchers hold the whole log (the
    interruption shows as `not_started`, then the re-run)."""
    pid, node_ids = build_plan(db)
    gateway = cluster.gateway()
    first = cluster.worker({"PLANPULSE_TEST_PAUSE_NODE": "graph"})
    cluster.wait_ready(gateway, first)

    async def scenario() -> None:
        watchers = [ResumingWatcher([gateway.url], pid, name=f"w{i}").start() for i in range(3)]
        try:
            await async_wait_until(lambda: all(w.connected for w in watchers))
            WorkQueue(StateStore(db), InProcessBus()).run_plan(pid)
            await async_wait_until(lambda: node_state(db, pid, "graph") == "processing", timeout=20)
            first.popen.kill()
            first.wait()
            second = cluster.worker()
            await asyncio.to_thread(cluster.wait_ready, second)
            await async_wait_until(lambda: run_over(db, pid, node_ids), timeout=30)
            await settle(watchers, db, pid)
        finally:
            await stop_all(watchers)

    asyncio.run(asyncio.wait_for(scenario(), 90))
    assert {node_state(db, pid, n) for n in node_ids} == {"completed"}
    states = [s for sequence, node, s in logged_events(db, pid) if node == "graph"]
    assert states == ["pending", "processing", "not_started", "pending", "processing", "completed"]


def test_a_gateway_killed_its_watchers_move_and_resume_without_a_gap(
    cluster: Cluster, db: Database, tmp_path: Path
) -> None:
    """kill -9 of gateway A in the middle of a plan run: A's watchers reconnect to B and
    resume with afterSequence; every watcher ends with the whole log, once, in order."""
    pid, node_ids = build_plan(db)
    release = tmp_path / "release"
    a, b = cluster.gateway(), cluster.gateway()
    worker = cluster.worker(
        {"PLANPULSE_TEST_PAUSE_NODE": "graph", "PLANPULSE_TEST_RELEASE_FILE": str(release)}
    )
    cluster.wait_ready(a, b, worker)

    async def scenario() -> None:
        on_a = [ResumingWatcher([a.url, b.url], pid, name=f"a{i}").start() for i in range(3)]
        on_b = [ResumingWatcher([b.url, a.url], pid, name=f"b{i}").start() for i in range(2)]
        watchers = on_a + on_b
        try:
            await async_wait_until(lambda: all(w.connected for w in watchers))
            WorkQueue(StateStore(db), InProcessBus()).run_plan(pid)
            await async_wait_until(lambda: node_state(db, pid, "graph") == "processing", timeout=20)
            before = await asyncio.to_thread(last_sequence, db, pid)
            await async_wait_until(
                lambda: all(w.last_sequence >= before for w in watchers), timeout=20
            )
            kill(a)
            release.touch()
            await async_wait_until(lambda: run_over(db, pid, node_ids), timeout=30)
            await settle(watchers, db, pid)
            for watcher in on_a:
                assert watcher.moves >= 1 and watcher.url == b.url, watcher
                assert watcher.resumes >= 1
                assert any(s > before for _t, s, _n in watcher.received)
            assert all(w.resumes == 0 for w in on_b)
        finally:
            await stop_all(watchers)

    asyncio.run(asyncio.wait_for(scenario(), 90))
    assert {node_state(db, pid, n) for n in node_ids} == {"completed"}


def kill(process: Process) -> None:
    process.popen.kill()
    process.wait()
