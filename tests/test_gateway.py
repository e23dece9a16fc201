"""The gateway over real sockets: the whole protocol, auth, Origin, limits, HTTP endpoints."""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.error
import urllib.request
from typing import Any

import orjson
import pytest
from websockets.exceptions import InvalidStatus

from gateway.auth import auth_required
from gateway.metrics import GatewayMetrics
from gateway.server import GatewayConfig
from storage import queries, tokens
from tests.helpers import wait_until
from tests.wsclient import SUBSCRIPTION, RawClient


def run(coro: Any, timeout: float = 30) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def make_project(server: Any, name: str = "p") -> int:
    with server.app.db.write() as s:
        return queries.create_project(s, name).id


# --- protocol -------------------------------------------------------------------------------


def test_init_timeout_closes_4408(start_server: Any) -> None:
    server = start_server(gateway=GatewayConfig(port=0, init_timeout=0.2))

    async def scenario() -> tuple[int | None, str]:
        client = await RawClient.open(server.url)
        return await client.closed()

    assert run(scenario()) == (4408, "Connection initialisation timeout")


def test_protocol_close_codes(server: Any) -> None:
    async def case(*messages: Any, init: bool = True) -> tuple[int | None, str]:
        client = await RawClient.open(server.url)
        if init:
            await client.init()
        for message in messages:
            await client.send(message)
        return await client.closed()

    subscribe = {"id": "1", "type": "subscribe", "payload": {"query": "{ projects { id } }"}}

    async def scenario() -> None:
        assert await case({"type": "connection_init"}) == (4429, "Too many initialisation requests")
        assert await case(subscribe, init=False) == (4401, "Unauthorized")
        code, reason = await case("not json")
        assert code == 4400 and reason.startswith("Invalid message received")
        code, _ = await case({"type": "subscribe", "id": "1"})
        assert code == 4400

        client = await RawClient.open(server.url)
        await client.init()
        query = SUBSCRIPTION
        variables = {"projectId": make_project(server)}
        await client.subscribe("dup", query, variables)
        await client.subscribe("dup", query, variables)
        assert await client.closed() == (4409, "Subscriber for dup already exists")

    run(scenario())


def test_subprotocol_is_required_4406(server: Any) -> None:
    async def scenario() -> tuple[int | None, str]:
        # graphql-ws (legacy Apollo) is served too: see tests/test_legacy_gateway.py.
        client = await RawClient.open(server.url, subprotocols=["graphql-sse", "mqtt"])
        return await client.closed()

    assert run(scenario()) == (4406, "Subprotocol not acceptable")


def test_ping_pong_complete_and_id_reuse(server: Any) -> None:
    pid = make_project(server)

    async def scenario() -> None:
        client = await RawClient.open(server.url)
        await client.send({"type": "ping", "payload": {"t": 1}})  # allowed before init
        assert await client.recv() == {"type": "pong", "payload": {"t": 1}}
        await client.init()
        await client.send({"type": "ping"})
        assert await client.recv() == {"type": "pong"}
        # complete from the client ends a subscription; the id can be used again at once
        for _ in range(3):
            await client.subscribe("s", SUBSCRIPTION, {"projectId": pid})
            await client.send({"id": "s", "type": "complete"})
        # a query on a reused id answers next then complete (complete from the server)
        await client.subscribe("s", f"{{ project(id: {pid}) {{ name }} }}")
        assert (await client.recv())["payload"] == {"data": {"project": {"name": "p"}}}
        assert await client.recv() == {"id": "s", "type": "complete"}
        await client.close()

    run(scenario())


def test_errors_are_arrays_of_graphql_errors_not_closes(server: Any) -> None:
    async def scenario() -> None:
        client = await RawClient.open(server.url)
        await client.init()
        await client.subscribe("1", "subscription { nodeExecutionStatusChanged(")
        syntax = await client.recv()
        assert syntax["type"] == "error" and syntax["id"] == "1"
        assert syntax["payload"][0]["message"].startswith("Syntax Error")
        await client.subscribe("2", "{ noSuchField }")
        invalid = await client.recv()
        assert invalid["type"] == "error"
        assert "noSuchField" in invalid["payload"][0]["message"]
        await client.subscribe("3", SUBSCRIPTION, {"projectId": 424242})
        missing = await client.recv()
        assert missing["type"] == "error"
        assert missing["payload"][0]["message"] == "project 424242 does not exist"
        # still open and usable after all three
        assert (await client.execute("{ projects { id } }"))["data"] == {"projects": []}
        await client.close()

    run(scenario())


def test_keepalive_drops_a_dead_peer(start_server: Any) -> None:
    server = start_server(
        gateway=GatewayConfig(port=0, ping_interval=0.2, ping_timeout=0.3, close_timeout=0.3)
    )
    # A peer that completes the handshake, then never reads nor answers a ping.
    sock = socket.create_connection(("127.0.0.1", server.port))
    try:
        sock.sendall(
            b"GET /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n"
        )
        assert b"101" in sock.recv(4096).split(b"\r\n", 1)[0]
        wait_until(lambda: len(server.app.gateway.connections) == 1, what="connection open")
        wait_until(lambda: not server.app.gateway.connections, what="dead peer dropped")
    finally:
        sock.close()


# --- auth -----------------------------------------------------------------------------------


def _token(server: Any, **kwargs: Any) -> str:
    with server.app.db.write() as s:
        return tokens.create_token(s, **kwargs).raw


def test_auth_is_on_off_loopback_only() -> None:
    assert not auth_required("127.0.0.1", None)
    assert not auth_required("::1", None)
    assert auth_required("0.0.0.0", None)
    assert auth_required("10.1.2.3", None)
    assert auth_required("127.0.0.1", True)


def test_auth_tokens_and_scopes(start_server: Any) -> None:
    server = start_server(gateway=GatewayConfig(port=0, auth=True))
    mine, other = make_project(server, "mine"), make_project(server, "other")
    scoped = _token(server, project_ids=[mine])
    admin = _token(server, admin=True)

    async def refused(payload: dict[str, Any] | None) -> tuple[int | None, str]:
        client = await RawClient.open(server.url)
        await client.send({"type": "connection_init", "payload": payload})
        return await client.closed()

    async def scenario() -> None:
        assert await refused(None) == (4403, "Forbidden")
        assert await refused({"authorization": "Bearer pp_wrong"}) == (4403, "Forbidden")
        assert await refused({"authorization": scoped}) == (4403, "Forbidden")  # no scheme

        client = await RawClient.open(server.url)
        await client.init({"authorization": f"Bearer {scoped}"})
        await client.subscribe("1", SUBSCRIPTION, {"projectId": other})
        denied = await client.recv()
        assert denied["type"] == "error"
        assert f"not allowed to access project {other}" in denied["payload"][0]["message"]
        result = await client.execute(
            "mutation($p: Int!) { executePlan(projectId: $p) }", {"p": other}
        )
        assert result["data"] is None
        assert "not allowed" in result["errors"][0]["message"]
        listed = await client.execute("{ projects { id } }")
        assert listed["data"]["projects"] == [{"id": mine}]
        created = await client.execute('mutation { createProject(input: {name: "x"}) { id } }')
        assert created["data"] is None and "admin token" in created["errors"][0]["message"]
        await client.close()

        boss = await RawClient.open(server.url)
        await boss.init({"authorization": f"Bearer {admin}"})
        listed = await boss.execute("{ projects { id } }")
        assert {p["id"] for p in listed["data"]["projects"]} == {mine, other}
        await boss.close()

    run(scenario())


def test_origin_allow_list(start_server: Any) -> None:
    server = start_server(gateway=GatewayConfig(port=0, allowed_origins=["https://editor.example"]))

    async def scenario() -> None:
        with pytest.raises(InvalidStatus) as refused:
            await RawClient.open(server.url, origin="https://evil.example")
        assert refused.value.response.status_code == 403
        assert b"https://evil.example is not allowed" in refused.value.response.body
        for origin in ("https://editor.example", f"http://127.0.0.1:{server.port}", None):
            client = await RawClient.open(server.url, origin=origin)
            await client.init()
            await client.close()

    run(scenario())


# --- limits ---------------------------------------------------------------------------------


def test_limits(start_server: Any) -> None:
    server = start_server(
        gateway=GatewayConfig(
            port=0, max_message_bytes=2000, max_operations=2, max_connections=3, max_depth=3
        )
    )
    pid = make_project(server)

    async def scenario() -> None:
        big = await RawClient.open(server.url)
        await big.init()
        await big.send({"type": "ping", "payload": {"x": "y" * 5000}})
        code, reason = await big.closed()
        assert code == 1009 and "exceeds limit of 2000 bytes" in reason

        client = await RawClient.open(server.url)
        await client.init()
        for op_id in ("a", "b", "c"):
            await client.subscribe(op_id, SUBSCRIPTION, {"projectId": pid})
        third = await client.recv()
        assert third["id"] == "c" and third["type"] == "error"
        assert "the limit is 2" in third["payload"][0]["message"]
        await client.send({"id": "a", "type": "complete"})
        await client.send({"id": "b", "type": "complete"})
        await client.subscribe("deep", "{ planDag(projectId: 1) { nodes { id } } }")
        assert (await client.recv())["type"] == "next"
        assert (await client.recv())["type"] == "complete"
        await client.subscribe(
            "deeper",
            "{ a: planDag(projectId: 1) { nodes { id } } __schema { types { fields { name } } } }",
        )
        deep = await client.recv()
        assert deep["type"] == "error"
        assert "depth 4 exceeds the limit of 3" in deep["payload"][0]["message"]

        others = [await RawClient.open(server.url) for _ in range(2)]
        with pytest.raises(InvalidStatus) as full:
            await RawClient.open(server.url)
        assert full.value.response.status_code == 503
        assert b"connection limit of 3" in full.value.response.body
        for other in [client, *others]:
            await other.close()

    run(scenario())


# --- HTTP -----------------------------------------------------------------------------------


def test_healthz_and_metrics(server: Any) -> None:
    with urllib.request.urlopen(f"{server.http}/healthz") as response:
        health = orjson.loads(response.read())
        assert response.headers["Content-Type"] == "application/json"
    assert health["status"] == "ok"
    assert health["database"]["ok"] and health["bus"]["ok"]
    with urllib.request.urlopen(f"{server.http}/metrics") as response:
        text = response.read().decode()
    for name in (
        "planpulse_connections",
        "planpulse_subscriptions",
        "planpulse_project_actors",
        "planpulse_bus_changes_received_total",
        "planpulse_frames_delivered_total",
        "planpulse_frames_coalesced_total",
        "planpulse_slow_consumers_closed_total",
        "planpulse_handover_latency_seconds_bucket",
        "process_resident_memory_bytes",
    ):
        assert name in text, name
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{server.http}/nope")
    assert missing.value.code == 404
    missing.value.close()


def test_unknown_websocket_path_is_404(server: Any) -> None:
    async def scenario() -> None:
        with pytest.raises(InvalidStatus) as refused:
            await RawClient.open(server.url.replace("/graphql", "/elsewhere"))
        assert refused.value.response.status_code == 404

    run(scenario())


def test_delivery_metrics_count_every_change_from_many_threads() -> None:
    """Observations are batched off the actor threads; a scrape still counts every one."""
    metrics = GatewayMetrics(lambda: 0, lambda: 0)
    stamp = "2026-01-01T00:00:00.000Z"
    per_thread = GatewayMetrics.OBSERVE_BATCH * 3 + 7

    def deliver() -> None:
        for _ in range(per_thread):
            metrics.observe_delivery(stamp)

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    metrics.observe_delivery("not a timestamp")  # skipped, not counted
    text = metrics.render().decode()
    assert f"planpulse_changes_handed_over_total {4 * per_thread}.0" in text
    assert f"planpulse_handover_latency_seconds_count {4 * per_thread}.0" in text
