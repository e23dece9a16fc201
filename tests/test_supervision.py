"""A database error at each hop of the event path: the watcher is told, or carries on.

Each test breaks one hop with tests/db_faults.py (the driver's own OperationalError for the
statements of that hop) on a real gateway over a real socket and a real SQLite file:

* actor catch-up (a resume's replay): the watcher gets an `error` saying to resubscribe
  with `afterSequence: N`, the connection stays open, and the resubscription works;
* gap fill (a message lost between commit and actor): delivery waits, then carries on in
  order with nothing missing, and the watcher never hears of it;
* subscribe (the actor cannot even start): an `error`, not a 1011 close;
* executor persist: the write is retried, the change is in the log and delivered;
* plan run start: its nodes end in `error` with a sentence, published, and the shared
  workers run the next plan;
* a project actor that fails (a bug): replaced, its watcher sees every sequence once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from actors.messages import Resync
from actors.project import ProjectActor
from storage import queries
from storage.retry import COUNTS
from tests.db_faults import DatabaseFault, reads_of_the_log, writes_with
from tests.helpers import subscriber_count, wait_until
from tests.plan_helpers import SERVICES, add_node, add_source, assert_legal, states_by_node
from tests.wsclient import SUBSCRIPTION, RawClient


def run(coro: Any, timeout: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def fault(server: Any) -> Iterator[DatabaseFault]:
    injected = DatabaseFault(server.app.db.engine)
    yield injected
    injected.remove()


def new_project(server: Any, sources: int = 1) -> tuple[int, list[int]]:
    with server.app.db.write() as s:
        pid = queries.create_project(s, "faults").id
        ids = []
        for i in range(sources):
            source, _ = queries.create_data_source(
                s,
                pid,
                name=f"s{i}",
                filename=f"s{i}.csv",
                file_format="csv",
                data_type="nodes",
                content=SERVICES,
            )
            ids.append(source.id)
    return pid, ids


def change(server: Any, source_id: int, publish: bool = True) -> int:
    """Persist a state change of the source; publish it unless told not to (a lost
    message). Its sequence."""
    message = server.app.store.data_source_processing(source_id)
    if publish:
        server.app.bus.publish(message)
    return message.sequence


async def next_sequences(client: RawClient, op_id: str, count: int) -> list[int]:
    got = []
    while len(got) < count:
        message = await client.recv(timeout=20)
        assert message.get("id") == op_id and message["type"] == "next", message
        got.append(message["payload"]["data"]["nodeExecutionStatusChanged"]["sequence"])
    return got


def test_a_catch_up_that_cannot_read_the_log_tells_the_watcher_how_to_resume(
    server: Any, fault: DatabaseFault
) -> None:
    pid, (source,) = new_project(server)
    first = change(server, source)

    async def scenario() -> None:
        client = await RawClient.open(server.url)
        await client.init()
        await client.subscribe("live", SUBSCRIPTION, {"projectId": pid})
        await asyncio.to_thread(wait_until, lambda: subscriber_count(server, pid) == 1)
        fault.arm(reads_of_the_log)
        await client.subscribe("resume", SUBSCRIPTION, {"projectId": pid, "after": 0})
        error = await client.recv()
        assert error["type"] == "error" and error["id"] == "resume", error
        (detail,) = error["payload"]
        assert detail["extensions"] == {"code": "EVENT_LOG_UNAVAILABLE", "afterSequence": 0}
        assert "resubscribe with afterSequence: 0" in detail["message"]
        assert "SELECT" not in detail["message"]
        fault.disarm()
        # The connection lives on: the resubscription replays, the live one still works.
        await client.subscribe("again", SUBSCRIPTION, {"projectId": pid, "after": 0})
        assert await next_sequences(client, "again", 1) == [first]
        await asyncio.to_thread(wait_until, lambda: subscriber_count(server, pid) == 2)
        latest = await asyncio.to_thread(change, server, source)
        got = {}
        for _ in range(2):
            message = await client.recv()
            got[message["id"]] = message["payload"]["data"]["nodeExecutionStatusChanged"]
        assert {k: v["sequence"] for k, v in got.items()} == {"live": latest, "again": latest}
        await client.close()

    run(scenario())
    assert fault.hits > 0


def test_a_gap_fill_that_cannot_read_the_log_waits_and_delivers_everything_in_order(
    server: Any, fault: DatabaseFault
) -> None:
    pid, (source,) = new_project(server)

    async def scenario() -> None:
        client = await RawClient.open(server.url)
        await client.init()
        await client.subscribe("s", SUBSCRIPTION, {"projectId": pid})
        await asyncio.to_thread(wait_until, lambda: subscriber_count(server, pid) == 1)
        fault.arm(reads_of_the_log)
        lost = await asyncio.to_thread(change, server, source, False)  # never published
        routed = await asyncio.to_thread(change, server, source)  # reveals the gap
        await asyncio.to_thread(
            wait_until, lambda: server.app.hub.ask(pid, "stats")["behind"], 10, "behind"
        )
        more = await asyncio.to_thread(change, server, source)  # arrives while behind
        retries = COUNTS.retries
        await asyncio.to_thread(wait_until, lambda: COUNTS.retries > retries, 10, "a retry")
        fault.disarm()
        assert await next_sequences(client, "s", 3) == [lost, routed, more]
        assert not server.app.hub.ask(pid, "stats")["behind"]
        await client.close()

    run(scenario())


def test_a_subscribe_whose_actor_cannot_start_is_an_error_not_a_close(
    server: Any, fault: DatabaseFault
) -> None:
    pid, (source,) = new_project(server)
    change(server, source)
    fault.arm(reads_of_the_log)

    async def scenario() -> None:
        client = await RawClient.open(server.url)
        await client.init()
        await client.subscribe("s", SUBSCRIPTION, {"projectId": pid, "after": 0})
        error = await client.recv()
        assert error["type"] == "error" and error["id"] == "s", error
        assert "resubscribe with afterSequence: 0" in error["payload"][0]["message"]
        fault.disarm()
        await client.subscribe("s", SUBSCRIPTION, {"projectId": pid, "after": 0})
        assert await next_sequences(client, "s", 1) == [1]
        await client.close()

    run(scenario())


def test_an_executor_write_that_fails_is_retried_and_reaches_the_watcher(
    server: Any, fault: DatabaseFault
) -> None:
    pid, (source,) = new_project(server)

    async def scenario() -> None:
        client = await RawClient.open(server.url)
        await client.init()
        await client.subscribe("s", SUBSCRIPTION, {"projectId": pid})
        await asyncio.to_thread(wait_until, lambda: subscriber_count(server, pid) == 1)
        fault.arm(writes_with("completed"), times=2)
        result = await asyncio.to_thread(
            lambda: server.app.executors.process_data_source(source).get(timeout=30)
        )
        assert result == "completed"
        states = []
        while not states or states[-1] != "completed":
            message = await client.recv(timeout=20)
            event = message["payload"]["data"]["nodeExecutionStatusChanged"]
            states.append(event["datasourceExecution"]["executionState"])
        assert states == ["processing", "completed"]
        await client.close()

    run(scenario())
    assert fault.hits == 2
    with server.app.db.read() as s:
        assert queries.require_data_source(s, source).execution_state == "completed"


def test_a_plan_run_that_cannot_start_ends_its_nodes_in_error_and_the_workers_live_on(
    server: Any, fault: DatabaseFault
) -> None:
    db = server.app.db
    with db.write() as s:
        pid = queries.create_project(s, "plan").id
    first = add_source(db, pid, "a", SERVICES)
    second = add_source(db, pid, "b", SERVICES)
    add_node(db, pid, "merge", "MergeNode", first, second)
    server.app.store.deadline = 0.3  # give up quickly on the write the fault breaks
    order = [node.id for node in server.app.executors.plans.run(pid).order]
    server.app.executors.plans.wait(pid)  # a clean first run
    # The second run: its first `pending` write goes through, the second keeps failing.
    calls = {"n": 0}

    def second_pending(statement: str, parameters: Any) -> bool:
        if not writes_with("pending")(statement, parameters):
            return False
        calls["n"] += 1
        return calls["n"] >= 2

    fault.arm(second_pending)
    server.app.executors.plans.run(pid)
    outcomes = server.app.executors.plans.wait(pid)
    fault.disarm()
    assert outcomes[order[0]] == "error", outcomes
    with db.read() as s:
        stuck = [
            n.id
            for n in queries.list_nodes(s, pid)
            if _state(s, pid, n) in ("pending", "processing")
        ]
    assert stuck == []
    states = states_by_node(db, pid)
    assert states[order[0]][-1] == "error"
    with db.read() as s:
        rows = queries.events_after(s, pid, 0)
    assert any("the plan run stopped" in str(row.payload) for row in rows)
    # The shared workers are alive: a third run completes every node.
    server.app.store.deadline = 30.0
    server.app.executors.plans.run(pid)
    assert set(server.app.executors.plans.wait(pid).values()) == {"completed"}
    assert_legal(states_by_node(db, pid))


def _state(s: Any, pid: int, node: Any) -> str:
    if node.node_type == "DataSourceNode":
        return queries.require_data_source(s, node.config["dataSourceId"]).execution_state
    row = queries.get_graph_by_node(s, pid, node.id)
    return row.execution_state if row is not None else "not_started"


def test_a_project_actor_that_fails_is_replaced_and_its_watcher_misses_nothing(
    server: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pid, (source,) = new_project(server)
    broken: dict[str, int] = {}
    original = ProjectActor.events_for

    def events_for(self: ProjectActor, message: Any) -> Any:
        if message.sequence == broken.get("at"):
            broken.pop("at")
            raise RuntimeError("a bug in a handler")
        return original(self, message)

    monkeypatch.setattr(ProjectActor, "events_for", events_for)

    async def scenario() -> None:
        client = await RawClient.open(server.url)
        await client.init()
        await client.subscribe("s", SUBSCRIPTION, {"projectId": pid})
        await asyncio.to_thread(wait_until, lambda: subscriber_count(server, pid) == 1)
        one = await asyncio.to_thread(change, server, source)
        assert await next_sequences(client, "s", 1) == [one]
        dead = pykka.ActorRegistry.get_by_class(ProjectActor)
        broken["at"] = one + 1
        two = await asyncio.to_thread(change, server, source)  # kills the actor
        await asyncio.to_thread(
            wait_until, lambda: server.app.hub.actors_replaced == 1, 10, "a replacement"
        )
        three = await asyncio.to_thread(change, server, source)
        assert await next_sequences(client, "s", 2) == [two, three]
        assert not any(ref.is_alive() for ref in dead if ref.actor_class is ProjectActor)
        await client.close()

    with caplog.at_level(logging.WARNING):
        run(scenario())
    assert "a new one took its 1 subscribers from sequence" in caplog.text
    scrape = server.app.gateway.metrics.render().decode()
    assert "planpulse_project_actors_replaced_total 1.0" in scrape, scrape


def test_the_hub_never_raises_for_a_dead_actor(server: Any) -> None:
    pid, (source,) = new_project(server)
    hub = server.app.hub

    async def scenario() -> None:
        client = await RawClient.open(server.url)
        await client.init()
        await client.subscribe("s", SUBSCRIPTION, {"projectId": pid})
        await asyncio.to_thread(wait_until, lambda: subscriber_count(server, pid) == 1)
        hub._actors[pid].stop()  # dead, as after a failure, before any replacement
        await client.send({"id": "s", "type": "complete"})  # an unsubscribe to the dead
        await asyncio.to_thread(hub.resync_all)
        await asyncio.to_thread(hub.route, server.app.store.data_source_processing(source))
        assert await asyncio.to_thread(hub.ask, pid, Resync()) is None
        await asyncio.to_thread(wait_until, lambda: hub._gone.get(pid), 10, "unsubscribed")
        await client.close()

    run(scenario())
    assert hub.route_failures == 1


def test_a_node_reset_under_a_run_ends_the_run_instead_of_leaving_its_downstream_pending(
    start_server: Any,
) -> None:
    """What a worker whose claim was lost saw: someone else (settling what it took for a
    dead worker's leftovers) moved a running node to not_started; the run must still end,
    and nothing below that node may stay `pending`."""
    entered, release = threading.Event(), threading.Event()

    def pause(_project_id: int, node_id: str) -> None:
        if node_id == held["node"]:
            entered.set()
            release.wait(30)

    held = {"node": ""}
    server = start_server(before_node=pause)
    db = server.app.db
    with db.write() as s:
        pid = queries.create_project(s, "reset").id
    first = add_source(db, pid, "a", SERVICES)
    second = add_source(db, pid, "b", SERVICES)
    add_node(db, pid, "merge", "MergeNode", first, second)
    held["node"] = first
    server.app.executors.plans.run(pid)
    assert entered.wait(30)
    with db.read() as s:
        node = queries.get_node(s, pid, first)
        source = node.config["dataSourceId"]

    def reset(row: Any) -> None:
        row.execution_state = "not_started"

    server.app.bus.publish(server.app.store.data_source(source, reset))
    release.set()
    outcomes = server.app.executors.plans.wait(pid, timeout=30)
    assert outcomes[first] == "stopped" and outcomes["merge"] == "skipped", outcomes
    states = states_by_node(db, pid)
    assert states["merge"][-1] == "not_started", states
    with db.read() as s:
        assert queries.get_graph_by_node(s, pid, "merge").execution_state == "not_started"
