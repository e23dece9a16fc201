"""Delivery guarantees over real sockets: resume, snapshot, backpressure, lifecycle, memory."""

from __future__ import annotations

import asyncio
import gc
import random
import resource
import socket
import threading
from typing import Any

import pykka
import pytest

from actors.messages import StatusChanged
from actors.project import ProjectActor
from actors.state import StateStore
from gateway.server import GatewayConfig
from storage import queries
from tests.helpers import subscriber_count, wait_until
from tests.wsclient import SUBSCRIPTION, RawClient


def run(coro: Any, timeout: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def project_with_sources(server: Any, count: int) -> tuple[int, list[int]]:
    with server.app.db.write() as s:
        pid = queries.create_project(s, "delivery").id
        ids = []
        for i in range(count):
            source, _ = queries.create_data_source(
                s,
                pid,
                name=f"s{i}",
                filename=f"s{i}.csv",
                file_format="csv",
                data_type="nodes",
                content="id,label\na,A\n",
            )
            ids.append(source.id)
    return pid, ids


def current_rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def collect_until(client: RawClient, op_id: str, last: int) -> list[int]:
    """Sequences received on `op_id` until `last` arrives."""
    sequences: list[int] = []
    while True:
        message = await client.recv(timeout=20)
        assert message.get("id") == op_id, message
        assert message["type"] == "next", message
        sequence = message["payload"]["data"]["nodeExecutionStatusChanged"]["sequence"]
        sequences.append(sequence)
        if sequence >= last:
            return sequences


def test_fifty_clients_resume_at_random_points_while_publishing(server: Any) -> None:
    pid, sources = project_with_sources(server, 5)
    store: StateStore = server.app.store
    total = 400
    published = threading.Event()
    progress = {"last": 0}

    def publish() -> None:
        for i in range(total):
            change = store.data_source_processing(sources[i % len(sources)])
            server.app.bus.publish(change)
            progress["last"] = change.sequence
        published.set()

    async def resumer(rng: random.Random) -> None:
        await asyncio.sleep(rng.random() * 0.5)
        after = rng.randint(0, progress["last"])
        client = await RawClient.open(server.url)
        await client.init()
        await client.subscribe("r", SUBSCRIPTION, {"projectId": pid, "after": after})
        got = await collect_until(client, "r", total)
        assert got == list(range(after + 1, total + 1)), f"resumed after {after}"
        await client.close()

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        rng = random.Random(7)

        async def all_resumers() -> None:
            await asyncio.gather(*(resumer(random.Random(rng.random())) for _ in range(50)))

        run(all_resumers(), timeout=90)
    finally:
        publisher.join()
    assert published.is_set()


def test_snapshot_then_live(server: Any) -> None:
    pid, sources = project_with_sources(server, 3)
    store: StateStore = server.app.store
    for source in sources:
        server.app.bus.publish(store.data_source_processing(source))
    server.app.bus.publish(store.data_source_completed(sources[0], {"nodes": [], "edges": []}))

    async def scenario() -> None:
        client = await RawClient.open(server.url)
        await client.init()
        await client.subscribe("s", SUBSCRIPTION, {"projectId": pid, "snapshot": True})
        snapshot = [await client.recv() for _ in sources]
        states = {
            m["payload"]["data"]["nodeExecutionStatusChanged"]["nodeId"]: m["payload"]["data"][
                "nodeExecutionStatusChanged"
            ]["datasourceExecution"]["executionState"]
            for m in snapshot
        }
        assert states == {
            f"datasource_{sources[0]}": "completed",
            f"datasource_{sources[1]}": "processing",
            f"datasource_{sources[2]}": "processing",
        }
        await asyncio.to_thread(
            lambda: server.app.bus.publish(store.data_source_failed(sources[1], "boom"))
        )
        live = (await client.recv())["payload"]["data"]["nodeExecutionStatusChanged"]
        assert live["sequence"] == 5
        assert live["datasourceExecution"] == {"executionState": "error", "errorMessage": "boom"}
        await client.close()

    run(scenario())


def test_resume_from_before_retention_is_an_error(start_server: Any) -> None:
    server = start_server(retention=10)
    pid, sources = project_with_sources(server, 1)
    for _ in range(30):
        server.app.store.data_source_processing(sources[0])

    async def scenario() -> None:
        client = await RawClient.open(server.url)
        await client.init()
        await client.subscribe("old", SUBSCRIPTION, {"projectId": pid, "after": 2})
        error = await client.recv()
        assert error["type"] == "error"
        message = error["payload"][0]["message"]
        assert "no longer in the event log" in message and "snapshot: true" in message
        assert error["payload"][0]["extensions"]["code"] == "RESUME_TOO_OLD"
        page = await client.execute(
            "query($p: Int!, $a: Int) { executionEvents(projectId: $p, afterSequence: $a, "
            "limit: 5) { sequence } }",
            {"p": pid, "a": 25},
        )
        assert [e["sequence"] for e in page["data"]["executionEvents"]] == [26, 27, 28, 29, 30]
        await client.close()

    run(scenario())


def test_a_reader_that_stops_reading_is_shed_and_others_keep_up(start_server: Any) -> None:
    """A reader that stops reading loses its subscription alone (a protocol `error` naming
    afterSequence), not its connection; a fast reader of the same project gets everything."""
    server = start_server(gateway=GatewayConfig(port=0, mailbox_capacity=8, close_timeout=0.5))
    pid, sources = project_with_sources(server, 40)
    metrics = server.app.gateway.metrics
    count = 400

    async def scenario() -> None:
        # A small receive buffer (which also turns off its autotuning, up to 32 MB here):
        # once the reader stops, the server's writes back up within a few frames.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        sock.connect(("127.0.0.1", server.port))
        stalled = await RawClient.open(server.url, max_size=None, sock=sock)
        await stalled.init()
        await stalled.subscribe("slow", SUBSCRIPTION, {"projectId": pid})
        healthy = await RawClient.open(server.url, max_size=None)
        await healthy.init()
        await healthy.subscribe("fast", SUBSCRIPTION, {"projectId": pid})
        await asyncio.to_thread(wait_until, lambda: subscriber_count(server, pid) == 2)
        stalled.ws.transport.pause_reading()  # the socket stops reading: buffers fill
        with server.app.db.read() as s:
            first = queries.last_sequence(s, pid)
        got: list[int] = []
        for start in range(first, first + count, 8):  # bursts the fast reader can keep up with
            burst = asyncio.to_thread(_burst_from, server, pid, sources, start, 8, 50_000)
            more, _ = await asyncio.gather(collect_until(healthy, "fast", start + 8), burst)
            got += more
        assert got == list(range(first + 1, first + count + 1)), "the fast reader got all"
        await asyncio.to_thread(
            wait_until, lambda: metrics.subscriptions_shed._value.get() == 1, 20
        )
        await asyncio.to_thread(wait_until, lambda: subscriber_count(server, pid) == 1)
        stalled.ws.transport.resume_reading()
        error = await _frames_then_error(stalled, "slow", set())
        assert error["payload"][0]["extensions"]["code"] == "SUBSCRIBER_TOO_SLOW"
        # The connection is still there: it answers a ping.
        await stalled.send({"type": "ping"})
        assert (await stalled.recv())["type"] == "pong"
        assert metrics.slow_consumers_closed._value.get() == 0
        await stalled.close()
        await healthy.close()

    run(scenario())
    wait_until(lambda: subscriber_count(server, pid) == 0)


async def _frames_then_error(client: RawClient, op_id: str, seen: set[int]) -> dict[str, Any]:
    """Read `op_id`'s frames (their sequences into `seen`) until its `error`."""
    while True:
        message = await client.recv(timeout=20)
        assert message.get("id") == op_id, message
        if message["type"] == "error":
            return message
        assert message["type"] == "next", message
        seen.add(message["payload"]["data"]["nodeExecutionStatusChanged"]["sequence"])


def test_a_shed_slow_reader_resumes_on_its_connection_with_no_gap(start_server: Any) -> None:
    """The shed subscription's error names `afterSequence: N` (message and extensions):
    what arrived before it covers every sequence up to N, and a resubscription on the same
    connection, with the same id, from N gets everything after, in order, once (persisted
    changes, real sockets, a reader that stops reading); a fast reader on the same project
    meanwhile gets every change."""
    server = start_server(gateway=GatewayConfig(port=0, mailbox_capacity=8, close_timeout=10))
    pid, sources = project_with_sources(server, 40)
    metrics = server.app.gateway.metrics
    store = server.app.store

    async def scenario() -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        sock.connect(("127.0.0.1", server.port))
        stalled = await RawClient.open(server.url, max_size=None, sock=sock)
        await stalled.init()
        await stalled.subscribe("slow", SUBSCRIPTION, {"projectId": pid})
        healthy = await RawClient.open(server.url, max_size=None)
        await healthy.init()
        await healthy.subscribe("fast", SUBSCRIPTION, {"projectId": pid})
        await asyncio.to_thread(wait_until, lambda: subscriber_count(server, pid) == 2)
        with server.app.db.read() as s:
            first = queries.last_sequence(s, pid)
        stalled.ws.transport.pause_reading()

        def write_until_shed() -> None:
            big = "x" * 50_000  # persisted 50 KB error messages fill the socket's buffers fast
            i = 0
            while metrics.subscriptions_shed._value.get() == 0 and i < 2_000:
                server.app.bus.publish(store.data_source_failed(sources[i % len(sources)], big))
                i += 1

        writing = asyncio.ensure_future(asyncio.to_thread(write_until_shed))
        fast: list[int] = []
        while not (writing.done() and fast and fast[-1] == _last(server, pid)):
            message = await healthy.recv(timeout=20)
            fast.append(message["payload"]["data"]["nodeExecutionStatusChanged"]["sequence"])
        await writing
        assert metrics.subscriptions_shed._value.get() == 1
        last = _last(server, pid)
        assert fast == list(range(first + 1, last + 1)), "the fast reader got every change"
        stalled.ws.transport.resume_reading()
        before: set[int] = set()
        error = await _frames_then_error(stalled, "slow", before)
        (shed,) = error["payload"]
        resume = shed["extensions"]["afterSequence"]
        assert shed["extensions"]["code"] == "SUBSCRIBER_TOO_SLOW"
        assert f"afterSequence: {resume}" in shed["message"]
        assert before == set(range(first + 1, resume + 1)), (first, resume, sorted(before))
        await stalled.subscribe("slow", SUBSCRIPTION, {"projectId": pid, "after": resume})
        replayed = await collect_until(stalled, "slow", last)
        assert replayed == list(range(resume + 1, last + 1))
        assert metrics.slow_consumers_closed._value.get() == 0
        await stalled.close()
        await healthy.close()

    run(scenario(), timeout=120)


def _last(server: Any, pid: int) -> int:
    with server.app.db.read() as s:
        return queries.last_sequence(s, pid)


def test_a_slow_reader_of_few_nodes_is_coalesced_not_closed(start_server: Any) -> None:
    """A reader that stops reading gets its two nodes' frames coalesced, not a 1013 close.

    How much fits in the loopback socket buffers before the server's transport pauses
    depends on the machine (TCP autotuning), so the burst goes on, chunk by chunk, until
    the server has coalesced a frame: the test waits for that state, not for a count.
    """
    server = start_server(gateway=GatewayConfig(port=0, mailbox_capacity=4))
    pid, sources = project_with_sources(server, 2)
    metrics = server.app.gateway.metrics
    chunk, limit = 50, 4000  # 4000 frames of 50 kB outgrow any socket buffer

    def coalesced() -> bool:
        return metrics.frames_coalesced._value.get() > 0

    def burst_until_coalesced(first: int) -> int:
        sent = 0
        while sent < limit:
            _burst_from(server, pid, sources, first + sent, chunk, 50_000)
            sent += chunk
            try:
                wait_until(coalesced, 0.2)
                return sent
            except AssertionError:
                continue  # still fits in the buffers: send more
        raise AssertionError(f"no frame coalesced after {sent} frames to a paused reader")

    async def scenario() -> None:
        client = await RawClient.open(server.url, max_size=None)
        await client.init()
        await client.subscribe("s", SUBSCRIPTION, {"projectId": pid})
        await asyncio.to_thread(wait_until, lambda: subscriber_count(server, pid) == 1)
        with server.app.db.read() as s:
            first = queries.last_sequence(s, pid)
        client.ws.transport.pause_reading()
        sent = await asyncio.to_thread(burst_until_coalesced, first)
        last = first + sent
        client.ws.transport.resume_reading()
        got = await collect_until(client, "s", last)
        assert got == sorted(set(got)), "increasing, no duplicate"
        assert len(got) < sent, "older states of the same nodes were coalesced"
        assert got[-1] == last
        await client.close()

    run(scenario(), timeout=120)
    assert metrics.slow_consumers_closed._value.get() == 0


def _threads() -> int:
    """Threads other than the gateway's bounded worker pool, which starts its threads
    lazily (up to GatewayConfig.worker_threads) and keeps them: not a leak."""
    return sum(1 for t in threading.enumerate() if not t.name.startswith("graphql"))


def _live_project_actors(ignore: frozenset[str] = frozenset()) -> int:
    """Project actors alive now, leaving out those (by urn) alive before the test began:
    one test's leftovers must not fail another."""
    refs = pykka.ActorRegistry.get_by_class(ProjectActor)
    return sum(1 for ref in refs if ref.actor_urn not in ignore)


def test_thousand_connections_opened_and_killed_leave_nothing_behind(start_server: Any) -> None:
    earlier = frozenset(ref.actor_urn for ref in pykka.ActorRegistry.get_by_class(ProjectActor))
    server = start_server(idle_seconds=0.2)
    pids = [project_with_sources(server, 1)[0] for _ in range(10)]
    hub = server.app.hub
    gateway = server.app.gateway

    async def churn() -> None:
        clients = []
        for i in range(1000):
            client = await RawClient.open(server.url)
            await client.init()
            await client.subscribe("s", SUBSCRIPTION, {"projectId": pids[i % len(pids)]})
            clients.append(client)
        await asyncio.to_thread(
            wait_until,
            lambda: gateway.metrics.subscriptions._value.get() == 1000,
            30,
            "1000 subscriptions",
        )
        for i, client in enumerate(clients):
            if i % 3 == 0:
                client.ws.transport.abort()  # abrupt: no close frame
            elif i % 3 == 1:
                await client.subscribe("t", SUBSCRIPTION, {"projectId": pids[0]})
                client.ws.transport.abort()  # mid-subscribe
            else:
                await client.close()

    def settled() -> bool:
        return (
            not gateway.connections
            and gateway.metrics.subscriptions._value.get() == 0
            and hub.actor_count == 0
        )

    run(churn(), timeout=120)  # warm-up round: pools, caches, allocator arenas
    wait_until(settled, 30, "first round cleaned up")
    gc.collect()
    threads, rss = _threads(), current_rss_kib()
    run(churn(), timeout=120)
    wait_until(settled, 30, "everything cleaned up")
    wait_until(lambda: _live_project_actors(earlier) == 0, 30, "project actors stopped")
    wait_until(lambda: _threads() <= threads, 30, "no other thread left behind")
    gc.collect()
    grown = current_rss_kib() - rss
    assert grown < 20_000, f"RSS grew by {grown} KiB over 1000 connections"


@pytest.mark.timeout(300)
def test_memory_is_flat_over_100k_events_to_one_subscription(server: Any) -> None:
    pid, sources = project_with_sources(server, 4)
    total, step = 100_000, 250

    async def scenario() -> int:
        client = await RawClient.open(server.url, max_size=None)
        await client.init()
        await client.subscribe("s", SUBSCRIPTION, {"projectId": pid})
        await asyncio.to_thread(wait_until, lambda: subscriber_count(server, pid) == 1)
        with server.app.db.read() as s:
            base = queries.last_sequence(s, pid)
        rss_after_warmup = 0
        for done in range(0, total, step):
            burst = asyncio.to_thread(_burst_from, server, pid, sources, base + done, step)
            got, _ = await asyncio.gather(collect_until(client, "s", base + done + step), burst)
            assert got == list(range(base + done + 1, base + done + step + 1))
            if done == 10_000:
                gc.collect()
                rss_after_warmup = current_rss_kib()
        gc.collect()
        await client.close()
        return current_rss_kib() - rss_after_warmup

    grown = run(scenario(), timeout=280)
    assert grown < 10 * 1024, f"RSS grew by {grown} KiB over 90,000 events"


def _burst_from(
    server: Any, pid: int, sources: list[int], after: int, count: int, payload_bytes: int = 0
) -> None:
    """Route changes after sequence `after` straight to the hub, without persisting them:
    a firehose into one project's actor (what is measured is delivery, not the database)."""
    blob = "x" * payload_bytes or None
    for i in range(count):
        source = sources[(after + i) % len(sources)]
        server.app.hub.route(
            StatusChanged(
                pid,
                after + i + 1,
                "datasource",
                source,
                None,
                {
                    "dataSourceId": source,
                    "filename": "f.csv",
                    "status": "processing",
                    "processedAt": None,
                    "executionState": "processing",
                    "errorMessage": blob,
                },
                "2026-01-01T00:00:00.000Z",
                ((f"datasource_{source}", "DataSourceNode"),),
            )
        )
