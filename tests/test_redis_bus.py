"""The Redis bus and the work queue, in this process, against real Redis and PostgreSQL.

The multi-process tests (test_multiprocess.py) run the same code in real processes; here
the pieces are held closer: which channels a gateway listens to, gap filling from the
log, a Redis outage and restart, the queue's refusals.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from actors.bus import InProcessBus
from actors.messages import BusMessage, PlanChanged, StatusChanged
from actors.redis_bus import RedisBus, bus_from_url, split_bus_url
from actors.state import StateStore
from actors.work_queue import QueueWorker, WorkQueue
from bench.redis_server import RedisServer
from storage import queries
from storage.db import Database
from storage.work_requests import WorkRequest
from tests.cluster import healthz
from tests.conftest import IN_CI, REDIS_URL, RunningServer, need_server
from tests.helpers import async_wait_until, client, request, subscriber_count, wait_until
from tests.plan_helpers import SERVICES, add_node, add_source

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

SUBSCRIPTION = """
subscription($projectId: Int!) {
  nodeExecutionStatusChanged(projectId: $projectId) {
    nodeId sequence datasourceExecution { executionState }
  }
}
"""


def bus_url(redis_url: str = REDIS_URL) -> str:
    return f"{redis_url}?prefix=pptest{uuid.uuid4().hex[:10]}"


@pytest.fixture
def redis_up() -> None:
    need_server("Redis", "127.0.0.1", 6379)


def channels(prefix: str) -> set[str]:
    r = redis.Redis.from_url(REDIS_URL)
    try:
        return {c.decode() for c in r.pubsub_channels(f"{prefix}:project:*")}
    finally:
        r.close()


def status(project_id: int, sequence: int) -> StatusChanged:
    """A change with its resolved nodes: they cross Redis with it (compared after the trip)."""
    nodes = (("datasource_1", "DataSourceNode"), ("copy", "DataSourceNode"))
    return StatusChanged(project_id, sequence, "datasource", 1, None, {}, "", nodes)


def test_bus_url_prefix_and_choice() -> None:
    assert split_bus_url("redis://h:1/0?prefix=a&db=2") == ("redis://h:1/0?db=2", "a")
    assert split_bus_url("redis://h:1/0") == ("redis://h:1/0", "planpulse")
    assert type(bus_from_url(None)).__name__ == "InProcessBus"
    with pytest.raises(ValueError, match="unknown bus URL"):
        bus_from_url("kafka://nope")


def test_a_gateway_listens_to_a_project_only_while_it_has_an_actor(redis_up: None) -> None:
    url = bus_url()
    prefix = split_bus_url(url)[1]
    received: list[BusMessage] = []
    resyncs: list[int | None] = []
    listener = RedisBus(url)
    publisher = RedisBus(url, listen=False)
    try:
        listener.attach(received.append, resync=resyncs.append)
        wait_until(listener.healthy, what="the listener connected")
        assert channels(prefix) == set()
        listener.watch(7)
        wait_until(lambda: channels(prefix) == {f"{prefix}:project:7"}, what="SUBSCRIBE 7")
        # Once the subscription is in effect, the actor catches up on what it may have
        # missed between its start and that moment.
        wait_until(lambda: 7 in resyncs, what="a catch-up of project 7")
        publisher.publish(status(8, 1))  # nobody listens to 8 here
        publisher.publish(status(7, 1))
        edit = PlanChanged(7, 2, {"type": "edge", "operation": "added", "edge": {"id": "e"}}, "t")
        publisher.publish(edit)
        wait_until(lambda: len(received) == 2, what="two messages of project 7")
        assert received == [status(7, 1), edit]
        listener.unwatch(7)
        wait_until(lambda: channels(prefix) == set(), what="UNSUBSCRIBE 7")
        assert listener.healthy() and publisher.healthy()
    finally:
        listener.close()
        publisher.close()


@pytest.fixture
def start_pg_server(pg_url: str, redis_up: None) -> Iterator[Callable[..., RunningServer]]:
    from gateway.app import AppConfig
    from gateway.server import GatewayConfig

    servers: list[RunningServer] = []

    def start(**kwargs: Any) -> RunningServer:
        config = AppConfig(database_url=pg_url, gateway=GatewayConfig(port=0), **kwargs)
        server = RunningServer(config)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _project_with_source(db: Database) -> tuple[int, int]:
    with db.write() as s:
        pid = queries.create_project(s, "bus").id
    node = add_source(db, pid, "services", SERVICES)
    with db.read() as s:
        return pid, queries.get_node(s, pid, node).config["dataSourceId"]


def test_lost_messages_are_filled_from_the_log(start_pg_server: Any) -> None:
    """Every 3rd change is persisted but never published, the last one too: a subscriber
    still gets 1..9 once, in order (gaps filled when a later sequence arrives, the tail
    when the project goes quiet)."""
    url = bus_url()
    server = start_pg_server(bus_url=url, executors=False)
    db = server.app.db
    pid, source = _project_with_source(db)
    store = StateStore(db)
    publisher = RedisBus(url, listen=False)
    seen: list[int] = []

    async def scenario() -> None:
        async with client(server.url) as session:

            async def watch() -> None:
                async for result in session.subscribe(request(SUBSCRIPTION, projectId=pid)):
                    seen.append(result["nodeExecutionStatusChanged"]["sequence"])

            watcher = asyncio.ensure_future(watch())
            try:
                await async_wait_until(lambda: subscriber_count(server, pid) == 1)
                prefix = split_bus_url(url)[1]
                await async_wait_until(lambda: f"{prefix}:project:{pid}" in channels(prefix))
                for n in range(1, 10):
                    change = (
                        store.data_source_processing(source)
                        if n % 2
                        else store.data_source_completed(source, {"nodes": [], "edges": []})
                    )
                    assert change.sequence == n
                    if n % 3 and n != 9:
                        publisher.publish(change)
                await async_wait_until(lambda: len(seen) >= 9, what="nine events")
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

    try:
        asyncio.run(asyncio.wait_for(scenario(), 20))
    finally:
        publisher.close()
    assert seen == list(range(1, 10))


# --- a Redis of our own, to stop and restart ------------------------------------------------


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        message = "this test starts and stops a redis-server of its own: none is installed"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


def test_a_redis_outage_shows_in_healthz_and_nothing_is_lost(
    start_pg_server: Any, private_redis: RedisServer
) -> None:
    """Redis dies mid-life: /healthz says so; work still runs (the queue is PostgreSQL);
    after Redis restarts the gateway reconnects, and the subscriber gets what happened
    during the outage, in order, once."""
    server = start_pg_server(bus_url=private_redis.url, executors=True)
    db = server.app.db
    pid, source = _project_with_source(db)
    seen: list[tuple[int, str]] = []
    reprocess = "mutation($i: Int!) { reprocessDataSource(id: $i) { id } }"

    def last_sequence() -> int:
        with db.read() as s:
            return queries.last_sequence(s, pid)

    async def scenario() -> None:
        async with client(server.url) as session, client(server.url) as admin:

            async def watch() -> None:
                async for result in session.subscribe(request(SUBSCRIPTION, projectId=pid)):
                    event = result["nodeExecutionStatusChanged"]
                    seen.append((event["sequence"], event["datasourceExecution"]["executionState"]))

            watcher = asyncio.ensure_future(watch())
            try:
                await async_wait_until(lambda: subscriber_count(server, pid) == 1)
                await admin.execute(request(reprocess, i=source))
                await async_wait_until(lambda: len(seen) == 2, what="the first processing")

                await asyncio.to_thread(private_redis.kill)
                await async_wait_until(
                    lambda: _only_the_bus_is_down(server.port), what="/healthz reporting it"
                )
                await admin.execute(request(reprocess, i=source))  # still taken: PostgreSQL
                await async_wait_until(lambda: last_sequence() == 4, what="processed meanwhile")
                assert len(seen) == 2  # nothing could be published

                await asyncio.to_thread(private_redis.start)
                await async_wait_until(
                    lambda: healthz(server.port)[0] == 200, what="/healthz ok again"
                )
                await async_wait_until(lambda: len(seen) == 4, what="the outage's events")
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

    asyncio.run(asyncio.wait_for(scenario(), 40))
    assert seen == [(1, "processing"), (2, "completed"), (3, "processing"), (4, "completed")]


def _only_the_bus_is_down(port: int) -> bool:
    status, body = healthz(port)
    return status == 503 and body["bus"]["ok"] is False and body["database"]["ok"] is True


# --- the queue as the gateway sees it ------------------------------------------------------


def test_a_gateway_without_executors_queues_work_and_refuses_what_cannot_run(
    start_pg_server: Any,
) -> None:
    server = start_pg_server(bus_url=bus_url(), executors=False)
    db = server.app.db
    assert isinstance(server.app.services.work, WorkQueue)
    with db.write() as s:
        pid = queries.create_project(s, "queue").id
    add_node(db, pid, "a", "GraphNode")
    add_node(db, pid, "b", "GraphNode", "a")
    with db.write() as s:
        queries.add_edge(s, pid, source="b", target="a", edge_id="back")
    plan = "mutation($p: Int!) { executePlan(projectId: $p) }"
    stop = "mutation($p: Int!) { stopPlanExecution(projectId: $p) }"

    async def scenario() -> list[str]:
        errors = []
        async with client(server.url) as session:
            try:
                await session.execute(request(plan, p=pid))
            except Exception as error:  # noqa: BLE001 - gql raises the GraphQL error
                errors.append(str(error))
            with db.write() as s:
                queries.delete_edge(s, pid, "back")
            assert (await session.execute(request(stop, p=pid)))["stopPlanExecution"] is False
            assert (await session.execute(request(plan, p=pid)))["executePlan"] is True
            try:
                await session.execute(request(plan, p=pid))
            except Exception as error:  # noqa: BLE001
                errors.append(str(error))
            assert (await session.execute(request(stop, p=pid)))["stopPlanExecution"] is True
        return errors

    cycle, busy = asyncio.run(scenario())
    assert "cycle" in cycle and "PLAN_REFUSED" in cycle
    assert "already has a plan run in progress" in busy

    # A worker that comes later finds the run stopped before it started: it drops it.
    from actors.executors import Executors

    executors = Executors(server.app.store, server.app.bus, workers=1)
    worker = QueueWorker(server.app.config.database_url, executors, poll_interval=0.2)
    worker.start()
    try:
        wait_until(lambda: _requests(db) == 0, what="the stopped request dropped")
        assert worker.done == 1
        with db.read() as s:
            assert queries.get_graph_by_node(s, pid, "a") is None  # never ran
    finally:
        worker.stop(5)
        executors.stop()


def _requests(db: Database) -> int:
    with db.read() as s:
        return s.query(WorkRequest).count()


def test_requests_for_one_data_source_run_one_after_the_other(start_pg_server: Any) -> None:
    """Two workers, three requests for one data source: never two at once."""
    server = start_pg_server(bus_url=bus_url(), executors=False)
    db = server.app.db
    pid, source = _project_with_source(db)
    queue = server.app.services.work
    for _ in range(3):
        queue.process_data_source(source)
    from actors.executors import Executors

    running = 0
    peak = 0
    lock = threading.Lock()

    class CountingExecutors(Executors):
        def process_data_source(self, data_source_id: int) -> Any:
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            future = super().process_data_source(data_source_id)
            future.get(timeout=10)
            with lock:
                running -= 1
            return future

    pools = [CountingExecutors(server.app.store, server.app.bus, workers=1) for _ in range(2)]
    workers = [QueueWorker(server.app.config.database_url, e, poll_interval=0.2) for e in pools]
    for worker in workers:
        worker.start()
    try:
        wait_until(lambda: _requests(db) == 0, timeout=20, what="three requests done")
    finally:
        for worker, executors in zip(workers, pools, strict=True):
            worker.stop(5)
            executors.stop()
    assert peak == 1
    assert sum(w.done for w in workers) == 3
    with db.read() as s:
        states = [row.payload["executionState"] for row in queries.events_after(s, pid, 0)]
    assert states == ["processing", "completed"] * 3


# --- a handler error is not a connection error --------------------------------------------


def test_the_listener_survives_an_error_in_the_hub(redis_up: None) -> None:
    """The hub raising for one project (its actor died) must not cost the connection: the
    bus stays healthy, other projects' messages go on, and the failing project is asked to
    catch up from the log instead (its message was persisted before it was published)."""
    url = bus_url()
    received: list[BusMessage] = []
    resyncs: list[int | None] = []

    def deliver(message: BusMessage) -> None:
        if message.project_id == 7:
            raise RuntimeError("project 7's actor is dead")
        received.append(message)

    listener = RedisBus(url)
    publisher = RedisBus(url, listen=False)
    try:
        listener.attach(deliver, resync=resyncs.append)
        listener.watch(7)
        listener.watch(8)
        prefix = split_bus_url(url)[1]
        wait_until(lambda: len(channels(prefix)) == 2, what="SUBSCRIBE 7 and 8")
        wait_until(listener.healthy, what="the listener connected")
        resyncs.clear()
        for sequence in (1, 2, 3):
            publisher.publish(status(7, sequence))
            publisher.publish(status(8, sequence))
        wait_until(lambda: len(received) == 3, what="project 8's three messages")
        assert received == [status(8, 1), status(8, 2), status(8, 3)]
        # queued per failed message, deduplicated while waiting: at least one catch-up
        wait_until(lambda: 7 in resyncs, what="a catch-up of 7 after its failed messages")
        assert listener.handler_errors == 3
        assert listener.healthy()
        assert listener.reconnects == 0
    finally:
        listener.close()
        publisher.close()


def test_a_dead_project_actor_does_not_take_the_bus_down(start_pg_server: Any) -> None:
    """What the issue saw after a database cut: a project actor died, the hub kept routing
    to it, and the listener reconnected on every message, never healthy again (/healthz 503
    `bus: false`) and deaf for every project. Now the bus stays up and the other project's
    subscriber gets every event."""
    url = bus_url()
    server = start_pg_server(bus_url=url, executors=False)
    db = server.app.db
    dead_pid, dead_source = _project_with_source(db)
    live_pid, live_source = _project_with_source(db)
    store = StateStore(db)
    publisher = RedisBus(url, listen=False)
    seen: list[int] = []
    prefix = split_bus_url(url)[1]

    async def scenario() -> None:
        async with client(server.url) as doomed, client(server.url) as session:

            async def watch(on: Any, pid: int, into: list[int]) -> None:
                async for result in on.subscribe(request(SUBSCRIPTION, projectId=pid)):
                    into.append(result["nodeExecutionStatusChanged"]["sequence"])

            watchers = [
                asyncio.ensure_future(watch(doomed, dead_pid, [])),
                asyncio.ensure_future(watch(session, live_pid, seen)),
            ]
            try:
                await async_wait_until(
                    lambda: (
                        subscriber_count(server, dead_pid) == 1
                        and subscriber_count(server, live_pid) == 1
                    )
                )
                await async_wait_until(lambda: len(channels(prefix)) == 2, what="both watched")
                # The actor dies behind the hub's back, as an exception in a handler does.
                ref = server.app.hub._actors[dead_pid]
                await asyncio.to_thread(ref.stop)
                for n in range(1, 5):
                    for source in (dead_source, live_source):
                        change = (
                            store.data_source_processing(source)
                            if n % 2
                            else store.data_source_completed(source, {"nodes": [], "edges": []})
                        )
                        publisher.publish(change)
                await async_wait_until(lambda: len(seen) >= 4, what="the live project's events")
                status, body = await asyncio.to_thread(healthz, server.port)
                assert status == 200, body
                assert server.app.bus.reconnects == 0
            finally:
                for watcher in watchers:
                    watcher.cancel()
                await asyncio.gather(*watchers, return_exceptions=True)

    try:
        asyncio.run(asyncio.wait_for(scenario(), 30))
    finally:
        publisher.close()
    assert seen == [1, 2, 3, 4]


def test_a_plan_run_and_its_projects_data_source_requests_never_overlap(pg_url: str) -> None:
    """Claims follow the queue per project: a run waits for the project's older
    data-source requests, and those queued after it wait for the run. (Overlapping, a
    reprocessing moved a data source the run had marked pending, the run's step for it
    ended without completing it, and the nodes below stayed pending for good.)"""
    from types import SimpleNamespace

    from actors.work_queue import _Slot

    db = Database(pg_url)
    db.create_schema()
    try:
        pid, source = _project_with_source(db)
        other_source = _project_with_source(db)[1]  # another project's
        queue = WorkQueue(StateStore(db), InProcessBus())
        first = queue.process_data_source(source)
        queue.run_plan(pid)
        queue.process_data_source(source)
        unrelated = queue.process_data_source(other_source)
        fake = SimpleNamespace(store=StateStore(db), bus=InProcessBus())
        worker = QueueWorker(pg_url, fake, slots=1)  # type: ignore[arg-type]
        slots = [_Slot(i) for i in range(3)]
        try:
            claimed = [worker._claim(slot) for slot in slots]
            assert [c.id if c else None for c in claimed] == [first, unrelated, None]
            worker._finish(slots[0], claimed[0])
            run = worker._claim(slots[0])
            assert run is not None and run.kind == "run_plan" and run.project_id == pid
            assert worker._claim(slots[2]) is None  # the later reprocessing waits for it
            worker._finish(slots[0], run)
            last = worker._claim(slots[2])
            assert last is not None and last.kind == "process_data_source"
        finally:
            for slot in slots:
                slot.drop_connection()
    finally:
        db.dispose()


def test_waiting_catch_ups_are_deduplicated_and_all_covers_them() -> None:
    from actors.redis_bus import _STOP, ResyncQueue

    waiting = ResyncQueue()
    for project_id in (3, 4, 3, 3, 4):
        waiting.put(project_id)
    assert len(waiting) == 2
    assert [waiting.get(), waiting.get()] == [3, 4]
    waiting.put(5)
    waiting.put(None)  # everything: covers 5
    waiting.put(6)  # queued while "all" waits: covered by it too
    assert len(waiting) == 1 and waiting.get() is None
    waiting.put(7)
    waiting.put(_STOP)
    assert waiting.get() is _STOP
