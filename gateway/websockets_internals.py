"""Everything of planpulse that reaches beneath websockets' public API, in one place.

tests/test_websockets_contract.py pins each of these against the installed websockets
(pyproject.toml bounds the versions it supports); when it fails after an upgrade, this
module is the one to mend.

* `text_frame_header` and `SocketSink` — the socket writer, the last stage of the event
  path. The fan-out writes tens of thousands of frames a second from one thread; going
  through `websockets`' `Protocol.send_text` builds a `Frame` object and serialises it
  generically (masking, extensions, checks) for every one, about 4 µs. A server frame
  without extensions is a fixed header followed by the payload, so the hot path writes
  exactly that, in one transport write per burst, after whatever the library queued.
* `FrontDoor` — websockets' `ServerConnection` with the first request's head routed
  before the library sees it: WebSocket upgrades go on to websockets unchanged, every
  other request to an h11 `HttpConnection` (gateway/http.py).
* `forget_handshake` — drops a connection's handshake headers (a few KiB per socket).

Everything else (handshake, control frames, closing, non-hot-path sends) stays with the
library.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.protocol import State

from gateway.http import MAX_HEAD_BYTES, UPGRADE, Handler, HttpConnection

_FIN_TEXT = 0x81  # FIN bit + opcode 1 (text); server frames are never masked
_HEAD_16 = struct.Struct("!BBH")
_HEAD_64 = struct.Struct("!BBQ")
_OPEN = State.OPEN  # an enum member's lookup costs a few hundred ns on Python 3.11
# Headers of the frame lengths seen, made once each: a fan-out writes the same few
# hundred lengths again and again (bounded: at most one per length below 64 KiB).
_HEADERS: dict[int, bytes] = {}


def text_frame_header(length: int) -> bytes:
    """The header of one unfragmented, unmasked text frame of `length` payload bytes."""
    if length < 126:
        return bytes((_FIN_TEXT, length))
    if length < 65536:
        return _HEAD_16.pack(_FIN_TEXT, 126, length)
    return _HEAD_64.pack(_FIN_TEXT, 127, length)


class SocketSink:
    """An outbox's way to the socket (`gateway.outbox.FrameSink`), as `websockets.broadcast`
    writes: synchronously, all waiting frames in one transport write, no task or await.

    Text frames get their header from `text_frame_header` rather than from a `Frame` object
    per message (the fan-out's hottest step); the connection must be open, with no
    extension and no fragmented message in progress, exactly when `send_text` would
    accept the frame. Anything the library queued itself goes first.
    """

    __slots__ = ("ws",)

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        if ws.protocol.extensions:  # compression=None in Gateway.start: never the case
            raise ValueError("SocketSink frames by hand: WebSocket extensions must be off")

    def writable(self) -> bool:
        ws = self.ws
        return ws.protocol.state is _OPEN and not ws.paused

    def is_open(self) -> bool:
        return self.ws.protocol.state is _OPEN

    def write(self, frames: list[bytes]) -> None:
        ws = self.ws
        protocol = ws.protocol
        if protocol.state is not _OPEN or protocol.expect_continuation_frame:
            return  # closing: the close handshake is the last thing to send
        # Open state: the library's queued chunks (if any) are bytes, no end-of-stream.
        chunks = protocol.data_to_send()
        append = chunks.append
        headers = _HEADERS
        for frame in frames:
            length = len(frame)
            header = headers.get(length)
            if header is None:
                header = text_frame_header(length)
                if length < 65536:
                    headers[length] = header
            append(header)
            append(frame)
        ws.transport.write(b"".join(chunks))

    async def drained(self) -> None:
        with contextlib.suppress(Exception):  # a lost connection ends the wait too
            await self.ws.drain()


class FrontDoor(ServerConnection):
    """websockets' connection, with the first request's head routed before the library
    sees it (see the module docstring). Create with `front_door(handler, ...)`."""

    http_handler: Handler
    max_body: int
    open_timeout: float
    open_http: set[HttpConnection]  # per server (see front_door): closed at shutdown

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head: bytearray | None = bytearray()
        self._http: HttpConnection | None = None
        # Set once the first request's head is routed; None once the handshake has read
        # it (a done Future is ~150 bytes a connection keeps for nothing).
        self._routed: asyncio.Future[bool] | None = self.loop.create_future()

    def data_received(self, data: bytes) -> None:
        if self._http is not None:
            self._http.feed(data)
            return
        if self._head is None:
            super().data_received(data)
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HEAD_BYTES:
                self.transport.abort()
            return
        head, self._head = bytes(self._head), None
        if head[:4].upper() == b"GET " and UPGRADE.search(head, 0, end + 2):
            self._routed.set_result(True)
            super().data_received(head)
            return
        self._http = HttpConnection(
            self, self.transport, self.http_handler, self.max_body, self.open_timeout
        )
        self.open_http.add(self._http)
        self._http.done.add_done_callback(lambda _: self.open_http.discard(self._http))
        self._routed.set_result(False)
        self._http.feed(head)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._routed is not None and not self._routed.done():
            self._routed.set_result(False)
        if self._http is not None:
            self._http.lost()
        super().connection_lost(exc)

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        """A WebSocket's handshake within `open_timeout`; a plain-HTTP connection stays
        until it closes (the library then aborts the already-closed transport)."""
        async with asyncio.timeout(self.open_timeout):
            assert self._routed is not None  # the handshake runs once
            websocket = await self._routed
            self._routed = None
            if websocket:
                await super().handshake(*args, **kwargs)
                return
        if self._http is not None:
            await self._http.done


def front_door(handler: Handler, max_body: int, open_timeout: float = 10.0) -> type[FrontDoor]:
    """A FrontDoor class bound to the gateway's HTTP handler (websockets' `create_connection`)."""
    return type(
        "GatewayFrontDoor",
        (FrontDoor,),
        {
            "http_handler": staticmethod(handler),
            "max_body": max_body,
            "open_timeout": open_timeout,
            "open_http": set(),
        },
    )


def forget_handshake(ws: ServerConnection) -> None:
    """Drop the handshake's headers once the connection is open (~2 KiB per socket).

    The request's headers are emptied in place: the protocol's parser (a generator
    suspended in `ServerProtocol.parse`, where the request is a local variable) holds the
    same Request object for the life of the connection, so replacing `ws.request` alone
    would keep them. websockets checks `request is not None` to know the handshake is
    done: the object stays, with its path and no headers.
    """
    if ws.request is not None:
        ws.request.headers = _NO_HEADERS
    ws.response = None


# One empty Headers for every forgotten handshake (168 bytes each otherwise); nothing
# reads, let alone changes, a connection's handshake headers after it opened.
_NO_HEADERS = Headers()
