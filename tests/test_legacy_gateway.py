"""The legacy `graphql-ws` subprotocol (subscriptions-transport-ws) over a real socket.

A bare Python client (tests/wsclient.RawClient offering `graphql-ws`) sees every frame:
negotiation next to graphql-transport-ws, ack + `ka`, queries and mutations over `start`,
subscriptions with `stop`, resume with `afterSequence`, auth, limits and timeouts. The same
server code runs as for graphql-transport-ws; only the protocol core differs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.server import GatewayConfig
from storage import queries, tokens
from tests.helpers import NODES_CSV, wait_until
from tests.wsclient import SUBSCRIPTION, RawClient

LEGACY = ["graphql-ws"]

CREATE_SOURCE = """
mutation($input: CreateDataSourceInput!) {
  createDataSource(input: $input) { id status executionState }
}
"""


def run(coro: Any, timeout: float = 30) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def make_project(server: Any, name: str = "p") -> int:
    with server.app.db.write() as s:
        return queries.create_project(s, name).id


def token(server: Any, **kwargs: Any) -> str:
    with server.app.db.write() as s:
        return tokens.create_token(s, **kwargs).raw


async def legacy(server: Any, **kwargs: Any) -> RawClient:
    client = await RawClient.open(server.url, subprotocols=LEGACY, **kwargs)
    assert client.ws.subprotocol == "graphql-ws"
    return client


async def recv_skipping_ka(client: RawClient, timeout: float = 10.0) -> dict[str, Any]:
    """The next message that is not a keep-alive."""
    while True:
        message = await client.recv(timeout)
        if message != {"type": "ka"}:
            return message


async def init(client: RawClient, payload: dict[str, Any] | None = None) -> None:
    await client.send({"type": "connection_init", "payload": payload or {}})
    assert await client.recv() == {"type": "connection_ack"}
    assert await client.recv() == {"type": "ka"}  # right after the ack (PROTOCOL.md)


async def start(client: RawClient, op_id: str, query: str, variables: Any = None) -> None:
    await client.send(
        {"id": op_id, "type": "start", "payload": {"query": query, "variables": variables}}
    )


async def execute(client: RawClient, op_id: str, query: str, variables: Any = None) -> Any:
    """A query or mutation over `start`: one `data`, then `complete`."""
    await start(client, op_id, query, variables)
    data = await recv_skipping_ka(client)
    assert data["type"] == "data" and data["id"] == op_id, data
    assert await recv_skipping_ka(client) == {"type": "complete", "id": op_id}
    return data["payload"]


def source_input(project_id: int) -> dict[str, Any]:
    return {
        "projectId": project_id,
        "name": "Services",
        "filename": "services.csv",
        "fileFormat": "csv",
        "dataType": "nodes",
        "content": NODES_CSV,
    }


# --- negotiation ----------------------------------------------------------------------------


def test_subprotocol_is_chosen_by_what_the_client_offers(server: Any) -> None:
    async def negotiated(offered: list[str]) -> str | None:
        client = await RawClient.open(server.url, subprotocols=offered)
        chosen = client.ws.subprotocol
        await client.close()
        return chosen

    async def scenario() -> None:
        assert await negotiated(["graphql-ws"]) == "graphql-ws"
        assert await negotiated(["graphql-transport-ws"]) == "graphql-transport-ws"
        # Both offered, in either order: the current protocol is preferred.
        assert await negotiated(["graphql-ws", "graphql-transport-ws"]) == "graphql-transport-ws"
        assert await negotiated(["graphql-transport-ws", "graphql-ws"]) == "graphql-transport-ws"
        neither = await RawClient.open(server.url, subprotocols=["mqtt"])
        assert await neither.closed() == (4406, "Subprotocol not acceptable")

    run(scenario())


# --- a whole session -----------------------------------------------------------------------


def test_mutations_and_subscription_over_start_see_processing_then_completed(
    server: Any,
) -> None:
    async def scenario() -> None:
        client = await legacy(server)
        await init(client)
        created = await execute(
            client, "1", 'mutation { createProject(input: {name: "legacy"}) { id name } }'
        )
        assert created["data"]["createProject"]["name"] == "legacy"
        pid = int(created["data"]["createProject"]["id"])
        await start(client, "2", SUBSCRIPTION, {"projectId": pid})
        # Subscribed before the mutation is read: messages of a socket are handled in order.
        await start(client, "3", CREATE_SOURCE, {"input": source_input(pid)})
        by_id: dict[str, list[dict[str, Any]]] = {"2": [], "3": []}
        while len(by_id["2"]) < 2 or not any(m["type"] == "complete" for m in by_id["3"]):
            message = await recv_skipping_ka(client)
            by_id[message["id"]].append(message)
        assert by_id["3"][0]["payload"]["data"]["createDataSource"]["status"] == "processing"
        events = [m["payload"]["data"]["nodeExecutionStatusChanged"] for m in by_id["2"]]
        assert all(m["type"] == "data" for m in by_id["2"])
        states = [e["datasourceExecution"]["executionState"] for e in events]
        assert states == ["processing", "completed"]
        assert events[0]["sequence"] < events[1]["sequence"]

        # stop: the server answers complete and sends nothing more for that id.
        await client.send({"id": "2", "type": "stop"})
        assert await recv_skipping_ka(client) == {"type": "complete", "id": "2"}
        wait_until(lambda: server.app.hub.ask(pid, "stats")["subscribers"] == 0)

        # Resume: afterSequence replays what came after it, from the log.
        await start(client, "4", SUBSCRIPTION, {"projectId": pid, "after": events[0]["sequence"]})
        replayed = await recv_skipping_ka(client)
        assert replayed["id"] == "4" and replayed["type"] == "data"
        assert replayed["payload"]["data"]["nodeExecutionStatusChanged"] == events[1]

        await client.send({"type": "connection_terminate"})
        assert await client.closed() == (1000, "connection_terminate received")

    run(scenario())


def test_start_right_after_init_without_waiting_for_the_ack(server: Any) -> None:
    """What subscriptions-transport-ws does: init and its queued starts in one go."""

    async def scenario() -> None:
        client = await legacy(server)
        await client.send({"type": "connection_init", "payload": {}})
        await start(client, "1", "{ projects { id } }")
        assert await client.recv() == {"type": "connection_ack"}
        assert await client.recv() == {"type": "ka"}
        data = await client.recv()
        assert data == {"type": "data", "id": "1", "payload": {"data": {"projects": []}}}
        assert await client.recv() == {"type": "complete", "id": "1"}
        await client.close()

    run(scenario())


def test_keepalive_every_interval(start_server: Any) -> None:
    server = start_server(gateway=GatewayConfig(port=0, legacy_keepalive=0.05))

    async def scenario() -> None:
        client = await legacy(server)
        await init(client)
        for _ in range(3):  # each further ka comes from the interval timer
            assert await client.recv(timeout=5) == {"type": "ka"}
        await client.close()
        # graphql-transport-ws gets no ka: its first message after the ack is our pong.
        current = await RawClient.open(server.url)
        await current.init()
        await current.send({"type": "ping"})
        assert await current.recv() == {"type": "pong"}
        await current.close()

    run(scenario())


# --- errors --------------------------------------------------------------------------------


def test_operation_errors_keep_the_connection(server: Any) -> None:
    async def scenario() -> None:
        client = await legacy(server)
        await client.send("not json")
        bad = await client.recv()
        assert bad == {
            "type": "connection_error",
            "payload": {"message": "the message is not valid JSON"},
        }
        await start(client, "early", "{ projects { id } }")
        early = await client.recv()
        assert early["type"] == "error" and early["id"] == "early"
        assert "connection_init" in early["payload"]["message"]
        await init(client)
        await start(client, "v", "{ nope }")
        invalid = await recv_skipping_ka(client)
        assert invalid["type"] == "error" and invalid["id"] == "v"
        assert "Cannot query field 'nope'" in invalid["payload"]["message"]
        await start(client, "s", SUBSCRIPTION, {"projectId": 424242})
        missing = await recv_skipping_ka(client)
        assert missing["type"] == "error" and missing["id"] == "s"
        # Still usable.
        assert (await execute(client, "ok", "{ projects { id } }"))["data"] == {"projects": []}
        await client.send({"type": "connection_init", "payload": {}})
        assert await client.closed() == (4429, "Too many initialisation requests")

    run(scenario())


def test_auth_refusal_and_scopes(start_server: Any) -> None:
    server = start_server(gateway=GatewayConfig(port=0, auth=True))
    mine, other = make_project(server, "mine"), make_project(server, "other")
    scoped = token(server, project_ids=[mine])

    async def scenario() -> None:
        refused = await legacy(server)
        await refused.send({"type": "connection_init", "payload": {"authorization": "Bearer x"}})
        await start(refused, "1", SUBSCRIPTION, {"projectId": mine})  # held, then dropped
        assert await refused.recv() == {
            "type": "connection_error",
            "payload": {"message": "Forbidden"},
        }
        assert await refused.closed() == (4403, "Forbidden")

        client = await legacy(server)
        await init(client, {"authorization": f"Bearer {scoped}"})
        await start(client, "1", SUBSCRIPTION, {"projectId": other})
        denied = await recv_skipping_ka(client)
        assert denied["type"] == "error" and denied["id"] == "1"
        assert f"not allowed to access project {other}" in denied["payload"]["message"]
        listed = await execute(client, "2", "{ projects { id } }")
        assert listed["data"]["projects"] == [{"id": mine}]
        await client.close()

    run(scenario())


def test_limits(start_server: Any) -> None:
    server = start_server(
        gateway=GatewayConfig(port=0, max_message_bytes=2000, max_operations=2, max_depth=3)
    )
    pid = make_project(server)

    async def scenario() -> None:
        big = await legacy(server)
        await init(big)
        await start(big, "1", "{ projects { id } }" + " " * 5000)
        code, reason = await big.closed()
        assert code == 1009 and "exceeds limit of 2000 bytes" in reason

        client = await legacy(server)
        await init(client)
        for op_id in ("a", "b", "c"):
            await start(client, op_id, SUBSCRIPTION, {"projectId": pid})
        third = await recv_skipping_ka(client)
        assert third["type"] == "error" and third["id"] == "c"
        assert third["payload"]["extensions"] == {"code": "TOO_MANY_OPERATIONS", "limit": 2}
        await client.send({"id": "a", "type": "stop"})
        assert await recv_skipping_ka(client) == {"type": "complete", "id": "a"}
        await start(
            client,
            "deep",
            "{ a: planDag(projectId: 1) { nodes { id } } __schema { types { fields { name } } } }",
        )
        deep = await recv_skipping_ka(client)
        assert deep["type"] == "error" and deep["id"] == "deep"
        assert "depth 4 exceeds the limit of 3" in deep["payload"]["message"]
        assert deep["payload"]["extensions"]["code"] == "QUERY_TOO_DEEP"
        await client.close()

    run(scenario())


def test_init_timeout_says_why_then_closes_4408(start_server: Any) -> None:
    server = start_server(gateway=GatewayConfig(port=0, init_timeout=0.2))

    async def scenario() -> None:
        client = await legacy(server)
        message = await client.recv()
        assert message["type"] == "connection_error"
        assert "Connection initialisation timeout" in message["payload"]["message"]
        assert await client.closed() == (4408, "Connection initialisation timeout")

    run(scenario())


@pytest.mark.parametrize("closer", ["client", "terminate"])
def test_closing_ends_the_subscriptions(server: Any, closer: str) -> None:
    pid = make_project(server)

    async def scenario() -> None:
        client = await legacy(server)
        await init(client)
        await start(client, "1", SUBSCRIPTION, {"projectId": pid})
        await execute(client, "q", "{ projects { id } }")  # the subscription is in place
        assert server.app.hub.ask(pid, "stats")["subscribers"] == 1
        if closer == "terminate":
            await client.send({"type": "connection_terminate"})
            await client.closed()
        else:
            await client.close()

    run(scenario())
    wait_until(
        lambda: (server.app.hub.ask(pid, "stats") or {"subscribers": 0})["subscribers"] == 0,
        what="the subscription ended with its socket",
    )


def test_server_shutdown_closes_legacy_sockets_with_1001(server: Any) -> None:
    pid = make_project(server)

    async def scenario() -> None:
        client = await legacy(server)
        await init(client)
        await start(client, "1", SUBSCRIPTION, {"projectId": pid})
        await execute(client, "q", "{ projects { id } }")  # the subscription is in place
        stopping = asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(server.app.gateway.stop(), server.loop)
        )
        assert await client.closed() == (1001, "server shutting down")
        await stopping

    run(scenario())
