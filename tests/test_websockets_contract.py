"""The contract with websockets: every behaviour beneath its public API that
gateway/websockets_internals.py relies on, pinned against a real server over loopback.

When one of these fails after an upgrade of websockets, gateway/websockets_internals.py is
the module to mend (and pyproject.toml's websockets range to revisit). `.ci/websockets_contract`
runs this file (and tests/test_frames.py) on the oldest websockets the range admits; the
regular suite runs it on the installed one, the newest.

What is pinned, by the part of websockets_internals.py that needs it:

* SocketSink: `protocol.state` is `State.OPEN` once the handler runs, and not once closing;
  `protocol.extensions` is empty with `compression=None` and lists a negotiated extension;
  `protocol.data_to_send()` hands over (as a list of bytes) what the library queued and not
  sent, so that writing it first keeps frames in order; `protocol.expect_continuation_frame`
  is true while a fragmented message is in progress; `paused` follows the transport's
  write-buffer limits (`write_limit`) and `drain()` waits until it is false again; hand-made
  frame headers of every length class are read by a real client as the library's.
* FrontDoor: the library builds the connection with `create_connection`, feeds it bytes
  through `data_received` (so that the first head can be held back and routed), tells it
  of a lost peer through `connection_lost`, awaits its `handshake(...)`, and after a
  handshake that leaves the protocol not OPEN aborts the transport without calling the
  handler.
* forget_handshake: with `request`'s headers emptied in place and `response` dropped, the
  connection still receives, sends, pings and closes.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import tomllib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import websockets
from packaging.requirements import Requirement
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosedOK
from websockets.protocol import State

from gateway.http import HttpReply, HttpRequest
from gateway.websockets_internals import (
    FrontDoor,
    SocketSink,
    forget_handshake,
    front_door,
)

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def run(scenario: Any) -> Any:
    return asyncio.run(asyncio.wait_for(scenario, 30))


class Served:
    """A websockets server over loopback built as Gateway.start builds it (FrontDoor,
    compression off, no library open timeout), whose handler hands each open connection
    to the test and holds it open until the test lets go."""

    def __init__(self) -> None:
        self.opened: asyncio.Queue[ServerConnection] = asyncio.Queue()
        self.release = asyncio.Event()
        self.handled = 0
        self.http_requests: list[HttpRequest] = []
        self.port = 0
        self.door: type[FrontDoor] | None = None

    async def handler(self, ws: ServerConnection) -> None:
        self.handled += 1
        await self.opened.put(ws)
        await self.release.wait()

    async def http(self, request: HttpRequest) -> HttpReply:
        self.http_requests.append(request)
        return HttpReply(200, f"plain {request.method} {request.path}\n".encode())

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"


@asynccontextmanager
async def served(
    door: Callable[[type[FrontDoor]], type[FrontDoor]] = lambda cls: cls, **options: Any
) -> AsyncIterator[Served]:
    state = Served()
    state.door = door(front_door(state.http, max_body=1024, open_timeout=5.0))
    settings: dict[str, Any] = {"compression": None, "open_timeout": None, **options}
    server = await serve(state.handler, "127.0.0.1", 0, create_connection=state.door, **settings)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        state.release.set()
        server.close()
        await server.wait_closed()


async def raw_upgrade(port: int, *, limit: int = 2**16) -> tuple[Any, Any]:
    """A WebSocket opened by hand (no client library): its reader reads only when told."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=limit)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /graphql HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def test_the_installed_websockets_is_in_the_range_pyproject_declares() -> None:
    """The range is what this contract is verified on: its lower bound in CI, its newest here."""
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (declared,) = [Requirement(d) for d in dependencies if Requirement(d).name == "websockets"]
    assert declared.specifier.contains(websockets.__version__), (
        f"websockets {websockets.__version__} is outside {declared.specifier}: "
        "run this contract on it, then widen the range in pyproject.toml"
    )
    upper = [s.version for s in declared.specifier if s.operator == "<"]
    assert upper and re.fullmatch(r"\d+", upper[0]), "the upper bound is the next major"


def test_an_open_connection_is_open_unpaused_without_extensions() -> None:
    async def scenario() -> None:
        async with served() as server, connect(server.url, compression=None):
            ws = await server.opened.get()
            assert ws.protocol.state is State.OPEN
            assert list(ws.protocol.extensions) == []
            assert ws.protocol.expect_continuation_frame is False
            assert ws.paused is False
            assert isinstance(ws.transport, asyncio.Transport)
            assert isinstance(ws.protocol.data_to_send(), list)
            sink = SocketSink(ws)
            assert sink.writable() and sink.is_open()

    run(scenario())


def test_a_negotiated_extension_is_listed_and_refused_by_the_sink() -> None:
    async def scenario() -> None:
        async with (
            served(compression="deflate") as server,
            connect(server.url, compression="deflate"),
        ):
            ws = await server.opened.get()
            assert [e.name for e in ws.protocol.extensions] == ["permessage-deflate"]
            with pytest.raises(ValueError, match="extensions must be off"):
                SocketSink(ws)

    run(scenario())


def test_hand_made_frames_follow_what_the_library_queued_and_read_as_its_own() -> None:
    """Frames the library queued but did not send yet (here a text frame, through the
    sans-I/O protocol) leave first, then the hand-framed ones: 7-bit, 16-bit and 64-bit
    payload lengths, one of them multi-byte UTF-8."""

    async def scenario() -> None:
        async with served() as server, connect(server.url, max_size=None) as client:
            ws = await server.opened.get()
            ws.protocol.send_text(b"queued by the library")
            payloads = [b"short", "é".encode() * 100, b"x" * 70_000, b""]
            SocketSink(ws).write(payloads)
            assert ws.protocol.data_to_send() == []  # the sink took the queued bytes
            received = [await client.recv() for _ in range(len(payloads) + 1)]
            assert received == ["queued by the library", *(p.decode() for p in payloads)]
            await ws.send("after, by the library")  # the library's own state is intact
            assert await client.recv() == "after, by the library"

    run(scenario())


def test_a_fragmented_message_in_progress_holds_the_sink_back() -> None:
    async def scenario() -> None:
        async with served() as server, connect(server.url) as client:
            ws = await server.opened.get()
            ws.protocol.send_text(b"first half, ", fin=False)
            assert ws.protocol.expect_continuation_frame is True
            sink = SocketSink(ws)
            sink.write([b"must wait"])  # would interleave with the fragments: not written
            ws.protocol.send_continuation(b"second half", fin=True)
            assert ws.protocol.expect_continuation_frame is False
            sink.write([b"then this"])
            assert await client.recv() == "first half, second half"
            assert await client.recv() == "then this"

    run(scenario())


def test_a_closing_connection_is_not_open_and_the_sink_writes_nothing() -> None:
    async def scenario() -> None:
        async with served() as server, connect(server.url) as client:
            ws = await server.opened.get()
            sink = SocketSink(ws)
            closing = asyncio.ensure_future(ws.close(1001, "going away"))
            await asyncio.sleep(0)
            assert ws.protocol.state is State.CLOSING
            assert not sink.is_open() and not sink.writable()
            sink.write([b"too late"])
            with pytest.raises(ConnectionClosedOK) as closed:
                await client.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            await closing
            assert ws.protocol.state is State.CLOSED
            sink.write([b"later still"])  # no error on a closed connection either

    run(scenario())


def test_paused_follows_the_write_buffer_and_drain_waits_for_it() -> None:
    """A peer that stops reading: the transport's buffer passes `write_limit`, `paused`
    turns true (the sink stops writing), `drain()` waits; reading it all resumes both."""

    async def scenario() -> None:
        async with served(write_limit=32 * 1024) as server:
            reader, writer = await raw_upgrade(server.port, limit=1024)
            ws = await server.opened.get()
            sink = SocketSink(ws)
            frame = b"y" * 60_000
            written = 0
            while sink.writable():  # the kernel's buffers fill first, then the transport's
                sink.write([frame])
                written += len(frame)
                await asyncio.sleep(0)
                assert written < 512 * 2**20, "never paused"
            assert ws.paused is True and ws.transport.get_write_buffer_size() > 32 * 1024
            drained = asyncio.ensure_future(sink.drained())
            await asyncio.sleep(0.05)
            assert not drained.done()
            total = 0
            while not drained.done():
                total += len(await reader.read(2**20))
            assert ws.paused is False and sink.writable()
            assert total > 0
            writer.close()

    run(scenario())


def test_the_front_door_routes_plain_http_away_from_the_library() -> None:
    """Plain HTTP on the same port: the library creates the FrontDoor, hands it the bytes
    (the head held back, then h11), awaits its handshake while the keep-alive connection
    serves two requests, then aborts the transport without calling the WebSocket handler."""

    async def scenario() -> None:
        async with served() as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # a head in two pieces
            await asyncio.sleep(0.05)
            writer.write(b"\r\n")
            first = await reader.readuntil(b"plain GET /healthz\n")
            assert first.startswith(b"HTTP/1.1 200")
            writer.write(b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            second = await reader.readuntil(b"plain POST /graphql\n")
            assert second.startswith(b"HTTP/1.1 200")
            assert server.door is not None and len(server.door.open_http) == 1
            writer.close()
            for _ in range(100):
                if not server.door.open_http:
                    break
                await asyncio.sleep(0.02)
            assert not server.door.open_http  # connection_lost reached the HTTP side
            assert [r.path for r in server.http_requests] == ["/healthz", "/graphql"]
            assert server.handled == 0

    run(scenario())


def test_the_front_door_passes_an_upgrade_to_the_library_unchanged() -> None:
    """An upgrade whose head arrives in pieces is handed to the library whole; the
    library's handshake (process_request included) and the handler then run as usual."""
    seen: list[str] = []

    def process_request(_ws: ServerConnection, request: Any) -> None:
        seen.append(request.path)

    async def scenario() -> None:
        async with served(process_request=process_request) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            key = base64.b64encode(os.urandom(16)).decode()
            head = (
                f"GET /graphql?x=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
            for piece in (head[:7], head[7:60], head[60:]):
                writer.write(piece)
                await asyncio.sleep(0.02)
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
            ws = await server.opened.get()
            assert seen == ["/graphql?x=1"] and not server.http_requests
            await ws.send("over the upgraded socket")
            assert (await reader.readexactly(2 + 24))[2:] == b"over the upgraded socket"
            writer.close()

    run(scenario())


def test_a_peer_gone_before_its_head_ends_the_handshake_without_the_handler() -> None:
    """connection_lost before the head is routed: the FrontDoor's handshake returns, the
    library gives up on the connection (no handler), and the server serves on."""
    returned: list[bool] = []

    def watched(door: type[FrontDoor]) -> type[FrontDoor]:
        class Watched(door):  # type: ignore[misc, valid-type]
            async def handshake(self, *args: Any, **kwargs: Any) -> None:
                await super().handshake(*args, **kwargs)
                returned.append(True)

        return Watched

    async def scenario() -> None:
        async with served(door=watched) as server:
            _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /grap")
            await asyncio.sleep(0.05)
            writer.close()
            for _ in range(100):
                if returned:
                    break
                await asyncio.sleep(0.02)
            assert returned == [True] and server.handled == 0
            async with connect(server.url) as client:
                ws = await server.opened.get()
                await ws.send("still serving")
                assert await client.recv() == "still serving"

    run(scenario())


def test_a_connection_without_its_handshake_headers_still_works() -> None:
    async def scenario() -> None:
        async with served() as server, connect(server.url + "?token=t") as client:
            ws = await server.opened.get()
            assert ws.request is not None and len(ws.request.headers) > 0
            forget_handshake(ws)
            assert ws.request is not None and len(ws.request.headers) == 0
            assert ws.request.path == "/graphql?token=t" and ws.response is None
            await client.send("in")
            assert await ws.recv() == "in"
            await ws.send("out")
            assert await client.recv() == "out"
            await asyncio.wait_for(await ws.ping(), 5)  # the pong comes back
            SocketSink(ws).write([b"hand-framed"])
            assert await client.recv() == "hand-framed"
            await client.close(1000, "done")
            await ws.wait_closed()
            assert ws.protocol.state is State.CLOSED and ws.protocol.close_code == 1000

    run(scenario())
