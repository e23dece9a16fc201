"""Bounded everywhere, losing nothing (issue 16 item 3), over real sockets where it counts.

* a resume's replay is read page by page as the socket takes it: a reader that does not
  read holds the server to a page or two in its outbox, never the whole replay;
* a project actor's inbox at its bound leaves changes to the event log and reads them back:
  the watcher gets every one, once, in order;
* the Dispatcher queue at its bound makes actor threads wait (never the loop), and loses
  nothing;
* a slow SSE reader is shed like a WebSocket one: an error event that names afterSequence;
* the queue depths, lag and counts are on /metrics.

The slow reader's per-subscription resume over WebSocket is in tests/test_delivery.py
(`test_a_shed_slow_reader_resumes_on_its_connection_with_no_gap`).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.request
from typing import Any

import orjson
import pytest

from actors import project as project_module
from actors.project import ProjectActor
from actors.runtime import PooledActor
from gateway.dispatcher import Dispatcher
from gateway.outbox import Outbox
from gateway.server import GatewayConfig
from gateway.subscriber import SubscriptionMailbox  # noqa: I001 - after the test helpers
from storage import queries
from tests.db_faults import DatabaseFault, reads_of_the_log
from tests.helpers import subscriber_count, wait_until
from tests.test_delivery import collect_until, project_with_sources
from tests.test_mailbox import Selection, Sink, decode, items, prefix
from tests.wsclient import SUBSCRIPTION, RawClient


def run(coro: Any, timeout: float = 90) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def _last(server: Any, pid: int) -> int:
    with server.app.db.read() as s:
        return queries.last_sequence(s, pid)


def _actor_stats(server: Any, pid: int) -> dict[str, Any]:
    stats = server.app.hub.ask(pid, "stats")
    assert stats is not None
    return stats


# --- replay, page by page ------------------------------------------------------------------


def test_a_long_replay_is_paged_as_the_socket_drains(
    start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = 10
    monkeypatch.setattr(project_module, "REPLAY_PAGE", page)
    server = start_server()
    pid, sources = project_with_sources(server, 7)
    store = server.app.store
    big = "x" * 40_000  # 40 KB a frame: a paused reader's buffers fill within a few pages
    total = 300
    for i in range(total):
        server.app.bus.publish(store.data_source_failed(sources[i % len(sources)], big))
    last = _last(server, pid)
    first = last - total

    async def scenario() -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        sock.connect(("127.0.0.1", server.port))
        client = await RawClient.open(server.url, max_size=None, sock=sock)
        await client.init()
        client.ws.transport.pause_reading()  # it reads nothing: the replay must wait
        await client.subscribe("r", SUBSCRIPTION, {"projectId": pid, "after": first})
        (connection,) = server.app.gateway.connections
        outbox: Outbox = connection.outbox

        def paused() -> bool:
            return outbox.backlog_length > 0

        await asyncio.to_thread(wait_until, paused, 20)
        # The socket has stopped taking frames: the replay stops too, a page or so on.
        held = []
        for _ in range(5):
            await asyncio.sleep(0.2)
            stats = await asyncio.to_thread(_actor_stats, server, pid)
            held.append(outbox.waiting)
            assert stats["replaying"] == 1, stats
        read_pages = stats["replay_pages"] + 1
        assert read_pages * page < total / 2, f"{read_pages} pages read for a paused reader"
        assert max(held) <= 2 * page, f"frames queued in the outbox: {held}"
        client.ws.transport.resume_reading()
        got = await collect_until(client, "r", last)
        assert got == list(range(first + 1, last + 1)), "every one, once, in order"
        stats = await asyncio.to_thread(_actor_stats, server, pid)
        assert stats["replaying"] == 0 and stats["subscribers"] == 1, stats
        assert stats["replay_pages"] >= total // page - 1
        # Live now: the next change arrives right after the replay.
        change = store.data_source_processing(sources[0])
        server.app.bus.publish(change)
        assert await collect_until(client, "r", change.sequence) == [change.sequence]
        await client.close()

    run(scenario())
    wait_until(lambda: subscriber_count(server, pid) == 0)


def test_a_replay_whose_next_page_cannot_be_read_tells_where_to_resume(
    start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database goes away between two pages of a resume: the watcher gets an `error`
    naming the afterSequence just after the last frame it got, and resuming there gives
    the rest, nothing missed, nothing twice."""
    page = 10
    monkeypatch.setattr(project_module, "REPLAY_PAGE", page)
    server = start_server()
    pid, sources = project_with_sources(server, 7)
    store = server.app.store
    big = "x" * 40_000
    total = 300
    for i in range(total):
        server.app.bus.publish(store.data_source_failed(sources[i % len(sources)], big))
    last = _last(server, pid)
    first = last - total
    fault = DatabaseFault(server.app.db.engine)

    async def scenario() -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        sock.connect(("127.0.0.1", server.port))
        client = await RawClient.open(server.url, max_size=None, sock=sock)
        await client.init()
        client.ws.transport.pause_reading()
        await client.subscribe("r", SUBSCRIPTION, {"projectId": pid, "after": first})
        (connection,) = server.app.gateway.connections
        await asyncio.to_thread(wait_until, lambda: connection.outbox.backlog_length > 0, 20)
        assert (await asyncio.to_thread(_actor_stats, server, pid))["replaying"] == 1
        fault.arm(reads_of_the_log)  # the next page's read fails, and its retries
        client.ws.transport.resume_reading()
        got: list[int] = []
        while True:
            message = await client.recv(timeout=20)
            assert message.get("id") == "r", message
            if message["type"] == "error":
                break
            got.append(message["payload"]["data"]["nodeExecutionStatusChanged"]["sequence"])
        (detail,) = message["payload"]
        assert got == list(range(first + 1, first + 1 + len(got))), "in order, no gap"
        assert len(got) < total, "the fault came before the replay's end"
        assert detail["extensions"]["afterSequence"] == got[-1], detail
        assert f"afterSequence: {got[-1]}" in detail["message"], detail
        fault.disarm()
        await client.subscribe("r2", SUBSCRIPTION, {"projectId": pid, "after": got[-1]})
        rest = await collect_until(client, "r2", last)
        assert rest == list(range(got[-1] + 1, last + 1)), "the rest, once, in order"
        await client.close()

    try:
        run(scenario())
    finally:
        fault.remove()
    assert fault.hits > 0
    wait_until(lambda: subscriber_count(server, pid) == 0)


# --- a project actor's inbox at its bound ----------------------------------------------------


class _Blocker(PooledActor):
    """Holds its actor thread until released (the project actor shares the thread)."""

    def on_receive(self, message: Any) -> Any:
        message.wait(30)


def test_an_inbox_at_its_bound_loses_nothing(
    start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    bound = 20
    monkeypatch.setattr(ProjectActor, "inbox_bound", bound)
    monkeypatch.setattr(project_module, "REPLAY_PAGE", 16)  # the read-back takes pages too
    server = start_server(actor_threads=1)  # one actor thread: the blocker holds it
    pid, sources = project_with_sources(server, 5)
    store = server.app.store
    total = 200

    async def scenario() -> None:
        client = await RawClient.open(server.url, max_size=None)
        await client.init()
        await client.subscribe("s", SUBSCRIPTION, {"projectId": pid})
        await asyncio.to_thread(wait_until, lambda: subscriber_count(server, pid) == 1)
        first = _last(server, pid)
        release = threading.Event()
        blocker = _Blocker.start()
        try:
            blocker.tell(release)  # the actor thread is busy from now until released

            def publish() -> None:
                for i in range(total):
                    server.app.bus.publish(store.data_source_processing(sources[i % 5]))

            await asyncio.to_thread(publish)
            inbox = server.app.hub._actors[pid].actor_inbox
            assert len(inbox) <= bound + 1, len(inbox)
            assert inbox.left_out >= total - bound, inbox.left_out
        finally:
            release.set()
            blocker.stop()
        got = await collect_until(client, "s", first + total)
        assert got == list(range(first + 1, first + total + 1)), "every one, once, in order"
        stats = await asyncio.to_thread(_actor_stats, server, pid)
        assert stats["gap_fills"] >= 1, stats
        body = await asyncio.to_thread(_scrape, server)
        assert _value(body, "planpulse_actor_inbox_left_out_total") >= total - bound
        await client.close()

    run(scenario())


# --- the Dispatcher queue at its bound -------------------------------------------------------


def test_the_dispatcher_bound_makes_actor_threads_wait_and_loses_nothing() -> None:
    limit, count = 10, 200

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        sink = Sink()
        dispatcher = Dispatcher(loop, max_waiting=limit)
        outbox = Outbox(sink, dispatcher, on_slow_consumer=lambda reason: None)
        mailbox = SubscriptionMailbox(outbox, prefix("d"), Selection(), 1_000, lambda e: None)
        done = threading.Event()

        def actor_thread() -> None:
            for sequence in range(1, count + 1):
                mailbox.deliver(items((f"n{sequence}", sequence)))
            done.set()

        producer = threading.Thread(target=actor_thread)
        producer.start()
        # The loop is busy (this blocking wait): the producer fills the queue and waits.
        deadline = time.monotonic() + 20
        while not dispatcher._blocked and time.monotonic() < deadline:
            time.sleep(0.01)
        assert dispatcher._blocked == 1, "the producer waits for room"
        assert dispatcher.waiting <= limit + 1, dispatcher.waiting
        assert not done.is_set()
        # The loop itself never waits: its control frames go in past the bound.
        outbox.put_control(b'{"type":"pong"}')
        assert dispatcher.waiting <= limit + 2
        # Give the loop back: it drains, the producer goes on, everything arrives.
        while not done.is_set():
            await asyncio.sleep(0.01)
        producer.join()
        for _ in range(10):
            await asyncio.sleep(0)
        frames = [f for f in sink.written if b'"next"' in f]
        assert [seq for _op, _node, seq in decode(frames)] == list(range(1, count + 1))
        assert b'{"type":"pong"}' in sink.written
        assert dispatcher.producer_waits >= 1

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_connection_whose_protocol_messages_pile_up_is_closed_not_its_subscriptions() -> None:
    """1013 only where the connection as a whole cannot keep up: protocol messages (never
    coalesced nor shed) past MAX_CONTROL_WAITING behind a paused socket."""
    from gateway.outbox import MAX_CONTROL_WAITING

    async def scenario() -> None:
        sink = Sink()
        slow: list[str] = []
        lagging: list[tuple[int, int, int]] = []
        outbox = Outbox(
            sink,
            Dispatcher(asyncio.get_running_loop()),
            on_slow_consumer=slow.append,
            on_lagging=lambda *shed: lagging.append(shed),
        )
        sink.paused = True
        for _ in range(MAX_CONTROL_WAITING):
            outbox.put_control(b'{"type":"pong"}')
        for _ in range(5):
            await asyncio.sleep(0)
        assert slow == [] and outbox.waiting == MAX_CONTROL_WAITING
        outbox.put_control(b'{"type":"pong"}')
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(slow) == 1 and "connection too slow" in slow[0], slow
        assert lagging == []

    asyncio.run(asyncio.wait_for(scenario(), 30))


# --- SSE: shed with an error event -----------------------------------------------------------


def test_a_slow_sse_reader_gets_an_error_event_naming_after_sequence(start_server: Any) -> None:
    server = start_server(gateway=GatewayConfig(port=0, mailbox_capacity=4))
    pid, sources = project_with_sources(server, 40)
    metrics = server.app.gateway.metrics
    store = server.app.store
    first = _last(server, pid)
    body = orjson.dumps({"query": SUBSCRIPTION, "variables": {"projectId": pid}})
    request = (
        b"POST /graphql HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(request)
    sock.settimeout(20)
    assert sock.recv(1).startswith(b"H")  # the stream started (headers, then it waits)
    wait_until(lambda: subscriber_count(server, pid) == 1)
    big = "x" * 50_000
    i = 0
    while metrics.subscriptions_shed._value.get() == 0 and i < 3_000:
        server.app.bus.publish(store.data_source_failed(sources[i % len(sources)], big))
        i += 1
    assert metrics.subscriptions_shed._value.get() == 1
    received = b""
    while b"event: complete" not in received:
        chunk = sock.recv(1 << 20)
        assert chunk, "the stream ended without the error event"
        received += chunk
    sock.close()
    events = [e for e in received.split(b"\n\n") if b"event: next" in e]
    sequences = []
    for event in events[:-1]:
        sequences.append(int(event.split(b"id: ", 1)[1].split(b"\n", 1)[0]))
    data = events[-1].split(b"data: ", 1)[1]
    error = orjson.loads(data[: data.rindex(b"}") + 1])["errors"][0]
    assert error["extensions"]["code"] == "SUBSCRIBER_TOO_SLOW"
    after = error["extensions"]["afterSequence"]
    assert f"afterSequence: {after}" in error["message"]
    assert sequences == list(range(first + 1, after + 1)), "up to the resume point, no gap"
    wait_until(lambda: subscriber_count(server, pid) == 0)


# --- metrics ---------------------------------------------------------------------------------


def _scrape(server: Any) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as r:
        return r.read().decode()


def _value(body: str, name: str) -> float:
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not on /metrics")


def test_queue_depths_lag_and_shed_counts_are_on_metrics(server: Any) -> None:
    body = _scrape(server)
    for name in (
        "planpulse_actor_inbox_messages",
        "planpulse_actor_inbox_max_messages",
        "planpulse_actor_inbox_left_out_total",
        "planpulse_dispatcher_queue_deliveries",
        "planpulse_dispatcher_producer_waits_total",
        "planpulse_dispatcher_bursts_total",
        "planpulse_dispatcher_burst_deliveries_total",
        "planpulse_dispatcher_wait_seconds_total",
        "planpulse_dispatcher_burst_seconds_total",
        "planpulse_outbox_backlog_frames",
        "planpulse_outbox_backlog_max_frames",
        "planpulse_delivery_lag_seconds",
        "planpulse_frames_coalesced_total",
        "planpulse_subscriptions_shed_total",
        "planpulse_slow_consumers_closed_total",
    ):
        _value(body, name)
        family = name.removesuffix("_total")
        assert f"# HELP {family} " in body or f"# HELP {name} " in body, f"{name}: no HELP"
    assert _value(body, "planpulse_delivery_lag_seconds") >= 0


# --- the legacy protocol: shed with an `error` message ---------------------------------------


def test_a_slow_legacy_reader_gets_an_error_message_and_resumes(start_server: Any) -> None:
    from tests.test_legacy_gateway import init, legacy, recv_skipping_ka, start

    server = start_server(gateway=GatewayConfig(port=0, mailbox_capacity=8))
    pid, sources = project_with_sources(server, 40)
    metrics = server.app.gateway.metrics
    store = server.app.store

    def sequence_of(message: dict[str, Any]) -> int:
        return message["payload"]["data"]["nodeExecutionStatusChanged"]["sequence"]

    async def scenario() -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        sock.connect(("127.0.0.1", server.port))
        client = await legacy(server, max_size=None, sock=sock)
        await init(client)
        await start(client, "slow", SUBSCRIPTION, {"projectId": pid})
        await asyncio.to_thread(wait_until, lambda: subscriber_count(server, pid) == 1)
        first = _last(server, pid)
        client.ws.transport.pause_reading()

        def write_until_shed() -> None:
            big = "x" * 50_000
            i = 0
            while metrics.subscriptions_shed._value.get() == 0 and i < 2_000:
                server.app.bus.publish(store.data_source_failed(sources[i % len(sources)], big))
                i += 1

        await asyncio.to_thread(write_until_shed)
        assert metrics.subscriptions_shed._value.get() == 1
        last = _last(server, pid)
        client.ws.transport.resume_reading()
        before = []
        while True:
            message = await recv_skipping_ka(client, 20)
            assert message.get("id") == "slow", message
            if message["type"] == "error":
                break
            assert message["type"] == "data", message
            before.append(sequence_of(message))
        error = message["payload"]
        resume = error["extensions"]["afterSequence"]
        assert error["extensions"]["code"] == "SUBSCRIBER_TOO_SLOW"
        assert f"afterSequence: {resume}" in error["message"]
        assert before == list(range(first + 1, resume + 1))
        await start(client, "slow", SUBSCRIPTION, {"projectId": pid, "after": resume})
        replayed: list[int] = []
        while not replayed or replayed[-1] < last:
            message = await recv_skipping_ka(client, 20)
            assert message["type"] == "data" and message["id"] == "slow", message
            replayed.append(sequence_of(message))
        assert replayed == list(range(resume + 1, last + 1))
        assert metrics.slow_consumers_closed._value.get() == 0
        await client.close()

    run(scenario(), timeout=120)
