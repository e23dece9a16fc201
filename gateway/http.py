"""The HTTP layer in front of the WebSocket server: one port, every request parsed properly.

websockets' own HTTP handling reads only `GET` (it exists to open WebSockets), so a POST to
/graphql was refused. `FrontDoor` (gateway/websockets_internals.py) is the asyncio protocol
of every accepted socket: it reads the first request's head and routes the connection once —

* `GET` with `Upgrade: websocket` goes on to websockets (its sans-I/O `ServerProtocol` via
  the library's `ServerConnection`, exactly as before: the WebSocket and fan-out path does
  not change by one call);
* anything else is served by an `HttpConnection`, an h11 state machine that parses every
  request of the (keep-alive) connection and answers with the gateway's handler.

The routing costs one bytes search per connection, never anything per frame.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import h11
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
UPGRADE = re.compile(rb"\r\nupgrade:[ \t]*websocket[ \t]*(\r\n|$)", re.IGNORECASE)


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    query: str
    headers: Headers
    body: bytes


@dataclass(slots=True)
class HttpReply:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


class HttpStream:
    """A streamed answer (Server-Sent Events): headers now, then `run` writes the body in
    chunks through the connection until it ends or the client goes (then it is cancelled)."""

    def __init__(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status = status
        self.headers = headers

    async def run(self, out: HttpConnection) -> None:
        raise NotImplementedError


Handler = Callable[[HttpRequest], Awaitable[HttpReply | HttpStream]]


class HttpConnection:
    """One plain-HTTP connection: h11 parses, `handler` answers, one request at a time."""

    def __init__(
        self,
        owner: ServerConnection,
        transport: asyncio.Transport,
        handler: Handler,
        max_body: int,
        idle_timeout: float = 10.0,
    ) -> None:
        self.owner = owner  # its pause_writing/resume_writing say when the socket is full
        self.transport = transport
        self.handler = handler
        self.max_body = max_body
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # A client gets `idle_timeout` seconds to send each whole request (head and body)
        # and to start the next one on a kept-alive connection: a client that trickles
        # bytes (slowloris) or idles holds no socket for longer than that.
        self.idle_timeout = idle_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(self.idle_timeout, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self.task is not None or self.done.done():
            return  # answering: the handler's own limits apply
        if self.h11.their_state is h11.IDLE and not self.request_started():
            self.transport.close()  # an idle keep-alive connection: nothing to say
            self.lost()
            return
        self._fail(
            408,
            f"the request was not complete within {self.idle_timeout:g} s "
            "(the gateway's open timeout): send the whole request at once\n",
        )

    def request_started(self) -> bool:
        """Bytes of a next request received but not yet a whole head."""
        return bool(self.h11.trailing_data[0])

    def feed(self, data: bytes) -> None:
        self.h11.receive_data(data)
        self._pump()

    def close(self) -> None:
        """The server is stopping: end a stream or an idle keep-alive connection now."""
        self.transport.close()
        self.lost()

    def lost(self) -> None:
        self._disarm()
        if self.task is not None:
            self.task.cancel()
        if not self.done.done():
            self.done.set_result(None)

    def _pump(self) -> None:
        while self.task is None and not self.done.done():
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as error:
                self._fail(400, f"malformed HTTP request: {error}\n")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self.request = event
                self.body = bytearray()
                length = _header(event.headers, b"content-length")
                if length is not None and length.isdigit() and int(length) > self.max_body:
                    self._fail(
                        413,
                        f"request body of {int(length)} bytes is over the limit of "
                        f"{self.max_body} bytes (--max-message-bytes)\n",
                    )
                    return
            elif isinstance(event, h11.Data):
                self.body += event.data
                if len(self.body) > self.max_body:
                    self._fail(413, f"request body over the limit of {self.max_body} bytes\n")
                    return
            elif isinstance(event, h11.EndOfMessage):
                assert self.request is not None
                self._disarm()
                self.task = asyncio.ensure_future(self._respond(self.request, bytes(self.body)))
            elif isinstance(event, h11.ConnectionClosed):
                self.transport.close()
                self.lost()
                return

    async def _respond(self, request: h11.Request, body: bytes) -> None:
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        headers = Headers((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers)
        try:
            reply = await self.handler(
                HttpRequest(request.method.decode("ascii"), path, query, headers, body)
            )
        except asyncio.CancelledError:
            return
        except Exception:  # noqa: BLE001 - a handler's bug is one 500, not a dead connection
            log.exception("HTTP %s %s failed", request.method, target)
            reply = HttpReply(500, b"internal error: see the server log\n")
        if isinstance(reply, HttpStream):
            if not await self._stream(reply):
                return
        else:
            self._send(reply, head_only=request.method == b"HEAD")
        if self.h11.our_state is h11.MUST_CLOSE or self.h11.their_state is h11.MUST_CLOSE:
            self.transport.close()
            self.lost()
            return
        try:
            self.h11.start_next_cycle()
        except h11.LocalProtocolError:
            self.transport.close()
            self.lost()
            return
        self.task = None
        self._arm()
        self._pump()

    async def _stream(self, stream: HttpStream) -> bool:
        """Send a streamed answer; False when the connection is gone."""
        headers = [(k, v) for k, v in stream.headers if k.lower() != "content-length"]
        headers.append(("Transfer-Encoding", "chunked"))
        self.transport.write(
            self.h11.send(
                h11.Response(
                    status_code=stream.status, headers=headers, reason=_phrase(stream.status)
                )
            )
        )
        try:
            await stream.run(self)
        except asyncio.CancelledError:
            return False
        except Exception:  # noqa: BLE001 - end this stream, keep the server
            log.exception("HTTP stream failed")
            self.transport.close()
            self.lost()
            return False
        if self.done.done() or self.transport.is_closing():
            return False
        self.transport.write(self.h11.send(h11.EndOfMessage()))
        return True

    # --- for streams ----------------------------------------------------------------------

    def is_open(self) -> bool:
        return not self.done.done() and not self.transport.is_closing()

    def writable(self) -> bool:
        return self.is_open() and not self.owner.paused

    def write_chunk(self, data: bytes) -> None:
        """One chunk of the streamed body (one socket write)."""
        if data and self.is_open():
            self.transport.write(self.h11.send(h11.Data(data=data)))

    async def drained(self) -> None:
        if self.is_open():
            await self.owner.drain()

    def _send(self, reply: HttpReply, head_only: bool = False) -> None:
        headers = [(k, v) for k, v in reply.headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(reply.body))))
        chunks = [
            self.h11.send(
                h11.Response(
                    status_code=reply.status, headers=headers, reason=_phrase(reply.status)
                )
            )
        ]
        if reply.body and not head_only:
            chunks.append(self.h11.send(h11.Data(data=reply.body)))
        chunks.append(self.h11.send(h11.EndOfMessage()))
        self.transport.write(b"".join(c for c in chunks if c))

    def _fail(self, status: int, text: str) -> None:
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                self._send(HttpReply(status, text.encode(), [("Connection", "close")]))
            except h11.LocalProtocolError:
                pass
        self.transport.close()
        self.lost()


def _phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _header(headers: Any, name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None
