"""A bare graphql-transport-ws client for protocol-level tests: every frame visible."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

SUBSCRIPTION = """
subscription($projectId: Int!, $after: Int, $snapshot: Boolean) {
  nodeExecutionStatusChanged(projectId: $projectId, afterSequence: $after, snapshot: $snapshot) {
    nodeId sequence datasourceExecution { executionState errorMessage }
  }
}
"""


class RawClient:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        subprotocols: list[str] | None = None,
        origin: str | None = None,
        **kwargs: Any,
    ) -> RawClient:
        ws = await connect(
            url,
            subprotocols=subprotocols if subprotocols is not None else ["graphql-transport-ws"],
            origin=origin,  # type: ignore[arg-type]
            **kwargs,
        )
        return cls(ws)

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.ws.send(message if isinstance(message, str) else orjson.dumps(message).decode())

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        return orjson.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def init(self, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "connection_init"}
        if payload is not None:
            message["payload"] = payload
        await self.send(message)
        ack = await self.recv()
        assert ack["type"] == "connection_ack", ack
        return ack

    async def subscribe(
        self, op_id: str, query: str, variables: dict[str, Any] | None = None
    ) -> None:
        await self.send(
            {"id": op_id, "type": "subscribe", "payload": {"query": query, "variables": variables}}
        )

    async def execute(self, query: str, variables: dict[str, Any] | None = None) -> Any:
        """A query or mutation on this socket; returns the `next` payload."""
        op_id = f"q{id(query)}{asyncio.get_running_loop().time()}"
        await self.subscribe(op_id, query, variables)
        while True:
            message = await self.recv()
            if message.get("id") != op_id:
                continue
            if message["type"] == "next":
                result = message["payload"]
                done = await self.recv()
                assert done == {"id": op_id, "type": "complete"}, done
                return result
            raise AssertionError(f"operation failed: {message}")

    async def closed(self, timeout: float = 10.0) -> tuple[int | None, str]:
        """Wait for the server to close; (code, reason)."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout)
        except ConnectionClosed as closed:
            received = closed.rcvd
            return (received.code, received.reason) if received else (None, "")

    async def close(self) -> None:
        await self.ws.close()
