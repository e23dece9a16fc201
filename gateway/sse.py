"""Subscriptions over Server-Sent Events: graphql-sse's distinct-connections mode.

One HTTP request (GET or POST, `Accept: text/event-stream`) carries one operation; the
answer is an event stream of `event: next` (data: an ExecutionResult) and a final
`event: complete`. A subscription's events go through the same mailbox and outbox machinery
as a WebSocket's (backpressure, coalescing, slow-consumer limit), framed as SSE instead of
WebSocket frames by `SseOutbox`; the WebSocket hot path is untouched.

Each `next` of a subscription carries `id: <sequence>`, the event's place in the project's
log, so that a client reconnecting with `Last-Event-ID` resumes exactly where it stopped:
the header becomes `afterSequence` when the document does not set one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from gateway.http import HttpConnection, HttpStream
from gateway.outbox import Item, Outbox, Subscription, WhenWritten, lagging_error
from gateway.subscriber import SubscriptionMailbox

if TYPE_CHECKING:
    from gateway.server import Gateway

EVENT_STREAM = "text/event-stream"
COMPLETE = b"event: complete\ndata:\n\n"
KEEPALIVE = b":\n\n"
KEEPALIVE_SECONDS = 12.0


def wants_event_stream(accept: str | None) -> bool:
    return bool(accept) and EVENT_STREAM in accept.lower()  # type: ignore[union-attr]


def next_event(result: dict[str, Any] | bytes, sequence: int | None = None) -> bytes:
    data = result if isinstance(result, bytes) else orjson.dumps(result)
    if sequence is None:
        return b"event: next\ndata: " + data + b"\n\n"
    return b"event: next\nid: %d\ndata: " % sequence + data + b"\n\n"


def last_event_sequence(header: str | None) -> int | None:
    """Last-Event-ID as a sequence, or None (absent, or not one of our ids)."""
    if header is None:
        return None
    header = header.strip()
    return int(header) if header.isdigit() else None


class SseSink:
    """An outbox's way to an HTTP connection's chunked body (`gateway.outbox.FrameSink`)."""

    __slots__ = ("http",)

    def __init__(self, http: HttpConnection) -> None:
        self.http = http

    def writable(self) -> bool:
        return self.http.writable()

    def is_open(self) -> bool:
        return self.http.is_open()

    def write(self, frames: list[bytes]) -> None:
        self.http.write_chunk(b"".join(frames))

    async def drained(self) -> None:
        with contextlib.suppress(Exception):  # a lost connection ends the wait too
            await self.http.drained()


class SseOutbox(Outbox):
    """An Outbox whose subscription frames are SSE `next` events with `id: <sequence>`."""

    def put(self, subscription: Subscription, items: Sequence[Item], replay: bool) -> None:
        serial = subscription.serial
        if self._closed or serial in self._dropped:
            return
        capacity = 0 if replay else subscription.capacity
        for node_id, sequence, payload in items:
            frame = next_event(payload, sequence)
            if self._drainer is None:
                self._ready.append((serial, node_id, sequence, frame, capacity))
            elif not self._backlog_append(serial, node_id, sequence, frame, capacity):
                break

    def put_frame(self, frame: bytes) -> None:
        """Control frames the slow way too, so they stay in order with `put`'s."""
        if self._closed:
            return
        if type(frame) is WhenWritten:
            super().put_frame(frame)
            return
        if self._drainer is None:
            self._ready.append((0, None, 0, frame, 0))
        else:
            self._backlog_append(0, None, 0, frame, 0)


class SseSubscription(HttpStream):
    """One subscription's event stream, until the client goes or the subscription fails."""

    def __init__(
        self,
        gateway: Gateway,
        headers: list[tuple[str, str]],
        request: Any,
        selection: Any,
        after_sequence: int | None,
    ) -> None:
        super().__init__(200, headers)
        self.gateway = gateway
        self.request = request
        self.selection = selection
        self.after_sequence = after_sequence

    async def run(self, out: HttpConnection) -> None:
        gateway = self.gateway
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()

        def failed(errors: list[dict[str, Any]]) -> None:
            outbox.put_control(next_event({"errors": errors}) + COMPLETE)
            loop.call_soon(_end, ended)

        def lagging(_serial: int, after: int, capacity: int) -> None:
            """Shed (gateway/outbox.py): an error event with the afterSequence to resume
            from (as a `Last-Event-ID` or in the document), then the stream ends."""
            gateway.metrics.subscriptions_shed.inc()
            failed([lagging_error(after, capacity)])

        outbox = SseOutbox(
            SseSink(out),
            gateway.dispatcher(loop),
            on_slow_consumer=lambda _reason: _end(ended),
            on_lagging=lagging,
            on_coalesced=gateway.metrics.frames_coalesced.inc,
            on_written=gateway.metrics.frames_delivered.inc,
        )

        gateway.metrics.outboxes.add(outbox)
        mailbox = SubscriptionMailbox(
            outbox,
            b"",
            self.selection,
            gateway.config.mailbox_capacity,
            lambda errors: loop.call_soon_threadsafe(failed, errors),
        )
        hub = gateway.services.hub
        project_id = self.request.project_id
        gateway.metrics.subscriptions.inc()
        out.write_chunk(KEEPALIVE)  # headers and a first byte now: the client knows it is on
        try:
            await loop.run_in_executor(
                gateway.pool,
                lambda: hub.subscribe(
                    project_id,
                    mailbox,
                    after_sequence=self.after_sequence,
                    snapshot=self.request.snapshot,
                ),
            )
            while not ended.done() and out.is_open():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(ended), KEEPALIVE_SECONDS)
                if not ended.done() and out.writable():
                    out.write_chunk(KEEPALIVE)  # a proxy sees traffic; a gone client errors
            await outbox_flushed(outbox)
        finally:
            gateway.metrics.subscriptions.dec()
            with contextlib.suppress(RuntimeError):
                loop.run_in_executor(gateway.pool, hub.unsubscribe, project_id, mailbox.key)
            outbox.close()


FLUSH_SECONDS = 10.0  # how long an ending stream waits for its last events to be written


async def outbox_flushed(outbox: Outbox) -> None:
    """Let the outbox write what is queued (a failure's error and complete), even behind a
    paused socket (a shed subscription's error waits there), for up to FLUSH_SECONDS or
    until the client is gone."""
    loop = asyncio.get_running_loop()
    written: asyncio.Future[None] = loop.create_future()
    outbox.when_written(0, lambda: written.done() or written.set_result(None))
    deadline = loop.time() + FLUSH_SECONDS
    while not written.done() and outbox.sink.is_open() and loop.time() < deadline:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(written), 0.5)


def _end(ended: asyncio.Future[None]) -> None:
    if not ended.done():
        ended.set_result(None)


class SseResult(HttpStream):
    """A query's or mutation's result (or a refusal) as one `next` and `complete`."""

    def __init__(self, headers: list[tuple[str, str]], body: bytes) -> None:
        super().__init__(200, headers)
        self.body = body

    async def run(self, out: HttpConnection) -> None:
        out.write_chunk(next_event(self.body) + COMPLETE)
