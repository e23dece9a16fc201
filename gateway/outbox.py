"""Per-connection backpressure: a connection's frames, written in the order produced.

The Dispatcher (gateway/dispatcher.py) brings deliveries to the loop; an `Outbox` writes
them. While a connection's socket accepts data, frames go straight to it (`SocketSink`,
gateway/websockets_internals.py). When its write buffer is full (the transport paused
writing), frames wait in the outbox's backlog until it drains; there at most `capacity`
live frames per subscription may wait. When a new frame would exceed that, an undelivered
older frame of the same node is dropped (only a node's latest state matters; the client
sees the skipped sequence and can read it from the log). If no frame of that node is
waiting, the subscriber cannot keep up at all: it is shed, that subscription alone. Its
waiting frames are dropped, and the connection's `on_lagging` sends the subscription's
protocol `error` (`lagging_error`), which says where to resume without a gap: afterSequence
N, N being the last sequence before the first frame of the subscription that had not been
handed to the socket (everything before it has been, and arrives before the error, on the
same socket). The connection and its other subscriptions carry on.

The connection as a whole is closed with 1013 (`on_slow_consumer`) only when it cannot keep
up with what is never coalesced nor shed: more than `MAX_CONTROL_WAITING` protocol messages
(acks, pongs, results, errors) waiting behind its paused socket. Replays are bounded
upstream: a project actor sends a resume's next page only once this outbox has handed the
last one to the socket (`when_written`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from gateway.dispatcher import Dispatcher

log = logging.getLogger(__name__)

SLOW_CONSUMER_CODE = 1013  # "Try Again Later"
SUBSCRIBER_TOO_SLOW = "SUBSCRIBER_TOO_SLOW"
MAX_CONTROL_WAITING = 1000  # protocol messages behind a paused socket before a 1013 close

Item = tuple[str, int, bytes]  # node id, sequence, rendered payload


class FrameSink(Protocol):
    """Where an outbox writes: a WebSocket (gateway/websockets_internals.SocketSink) or an
    event stream (gateway/sse.py)."""

    def writable(self) -> bool:
        """Open, and its write buffer below the high-water mark."""
        ...

    def is_open(self) -> bool: ...

    def write(self, frames: list[bytes]) -> None:
        """Frame and write all of them now (one socket write for the lot)."""
        ...

    async def drained(self) -> None:
        """Return once the write buffer is below the low-water mark or the socket closed."""
        ...


class Subscription(Protocol):
    """What `Outbox.put` needs of a subscription (gateway/subscriber.SubscriptionMailbox)."""

    serial: int  # names it in the outbox; 0 is control frames
    prefix: bytes  # its frames are prefix + payload + b"}"
    capacity: int  # live frames that may wait behind a paused socket before coalescing


class WhenWritten(NamedTuple):
    """A `when_written` request on its way through the Dispatcher, in order with frames."""

    serial: int
    callback: Callable[[], None]


_NO_SERIALS: frozenset[int] = frozenset()


def _not_counted(frames: int) -> None:
    pass


class _Frame:
    """A frame waiting in a backlog; `data` None once it has been coalesced away."""

    __slots__ = ("serial", "node_id", "sequence", "data")

    def __init__(self, serial: int, node_id: str | None, sequence: int, data: bytes) -> None:
        self.serial = serial  # which subscription; 0 for control frames
        self.node_id = node_id
        self.sequence = sequence  # 0 for control frames
        self.data: bytes | None = data


class Outbox:
    """Frames for one connection, written in the order they were produced.

    Used on the event loop only (the Dispatcher brings deliveries there), so it needs no
    lock. `put` and `put_frame` queue; `flush` writes what is queued if the socket
    accepts it, or moves it to the backlog and starts one drain task until it does.

    The fast path: whether the socket takes frames is decided once per burst, at its first
    frame (nothing between the Dispatcher's `put`s and its `flush` of a burst can pause or
    close the socket: only the loop's I/O callbacks and this outbox's own writes do). Then
    each frame is one bytes object in a list, written by `flush` in one socket write; the
    per-frame accounting of the slow path (`_ready` → backlog) is only made for a socket
    that is paused already.
    """

    def __init__(
        self,
        sink: FrameSink,
        dispatcher: Dispatcher,
        *,
        on_slow_consumer: Callable[[str], None],
        on_lagging: Callable[[int, int, int], None] | None = None,
        on_coalesced: Callable[[int], None] = lambda n: None,
        on_written: Callable[[int], None] = _not_counted,
    ) -> None:
        """`on_lagging(serial, after_sequence, capacity)`: a subscription was shed (see the
        module docstring); without it, the connection is closed instead (1013).
        `on_slow_consumer(reason)`: the connection as a whole cannot keep up (1013)."""
        self.sink = sink
        self.dispatcher = dispatcher
        self.touched = False  # queued frames since the Dispatcher's last flush of it
        # Told how many frames were written; by the Dispatcher once per burst for the
        # fast path, by the drain task for the backlog.
        self.on_written = on_written
        # This burst: None until its first frame; True while the socket takes frames
        # straight away (`_frames`), False if they go the slow way (`_ready`).
        self._direct: bool | None = None
        self._frames: list[bytes] = []
        # The slow path, since the last flush: (serial, node id or None, sequence, frame,
        # capacity); capacity 0 for frames that are never coalesced (control frames, replays).
        self._ready: list[tuple[int, str | None, int, bytes, int]] = []
        # The slow path, while the socket is paused: frames with per-subscription accounting.
        self._backlog: deque[_Frame] | None = None  # made when first needed (memory)
        self._pending: dict[int, int] = {}  # subscription serial -> live frames in backlog
        self._by_node: dict[tuple[int, str], deque[_Frame]] = {}
        self._dead = 0  # coalesced frames still in _backlog
        self._control_waiting = 0  # protocol messages in _backlog
        # Per subscription, the sequence of its first frame in _backlog (frames are queued
        # in sequence order, so the lowest): the resume point of a shed is just before it.
        self._first_waiting: dict[int, int] = {}
        self._backlog_since = 0.0  # when the socket paused (monotonic): the backlog's age
        # Callbacks waiting for everything queued before them to reach the socket.
        self._when_written: list[Callable[[], None]] = []
        self._drainer: asyncio.Task[None] | None = None
        # Subscriptions whose frames are no longer sent; the shared empty set until the
        # first (a set is 216 bytes, and most connections never need one).
        self._dropped: set[int] | frozenset[int] = _NO_SERIALS
        self._closed = False
        self._on_slow_consumer = on_slow_consumer
        self._on_lagging = on_lagging
        self._on_coalesced = on_coalesced

    # --- producers (the loop) ---------------------------------------------------------

    def put_control(self, data: bytes | str) -> None:
        """A protocol frame (ack, pong, complete, error, query result): never coalesced.

        It takes the Dispatcher's way too, so that it leaves after every frame an actor
        produced before it (a subscription's replay, say).
        """
        if isinstance(data, str):
            data = data.encode()
        if not self._closed:
            self.dispatcher.submit_control(self, data)

    def when_written(self, serial: int, callback: Callable[[], None]) -> None:
        """From any thread: call `callback` on the loop once everything queued before it
        has been handed to the socket (a replay's pace: actors/project.py). Never called
        if the subscription or the connection ends first."""
        self.dispatcher.submit_control(self, WhenWritten(serial, callback))  # type: ignore[arg-type]

    def put_frame(self, frame: bytes) -> None:
        """Queue a whole control frame (the Dispatcher's half of `put_control`), or a
        `when_written` callback."""
        if self._closed:
            return
        if type(frame) is WhenWritten:
            if frame.serial not in self._dropped:
                self._when_written.append(frame.callback)
            return
        if self._direct is None:
            self._direct = self._drainer is None and self.sink.writable()
        if self._direct:
            self._frames.append(frame)
        elif self._drainer is None:
            self._ready.append((0, None, 0, frame, 0))
        else:
            self._backlog_append(0, None, 0, frame, 0)

    def put(self, subscription: Subscription, items: Sequence[Item], replay: bool) -> None:
        """Queue rendered events for one subscription: `prefix + payload + b"}"` each."""
        serial = subscription.serial
        if self._closed or serial in self._dropped:
            return
        if self._direct is None:
            self._direct = self._drainer is None and self.sink.writable()
        prefix = subscription.prefix
        if self._direct:
            append = self._frames.append
            for item in items:
                append(prefix + item[2] + b"}")
            return
        capacity = 0 if replay else subscription.capacity
        if self._drainer is None:
            ready = self._ready
            for node_id, sequence, payload in items:
                ready.append((serial, node_id, sequence, prefix + payload + b"}", capacity))
        else:
            for node_id, sequence, payload in items:
                frame = prefix + payload + b"}"
                if not self._backlog_append(serial, node_id, sequence, frame, capacity):
                    break

    def flush(self) -> int:
        """Write what `put` queued, or keep it in the backlog while the socket is paused.

        Returns how many frames it wrote (the Dispatcher counts them once per burst).
        """
        self.touched = False
        self._direct = None
        written = 0
        frames = self._frames
        if frames:
            self._frames = []
            if self._closed:
                return 0
            self.sink.write(frames)  # the socket took frames at the burst's start
            written = len(frames)
        ready, self._ready = self._ready, []
        if self._closed:
            return 0
        if ready:
            if self._drainer is None and self.sink.writable():
                self.sink.write([frame for _serial, _node, _sequence, frame, _capacity in ready])
                written += len(ready)
            elif not self.sink.is_open():
                return written  # closing: nothing more will be written
            else:
                for serial, node_id, sequence, frame, capacity in ready:
                    self._backlog_append(serial, node_id, sequence, frame, capacity)
                if self._drainer is None and self._backlog:
                    self._backlog_since = time.monotonic()
                    self._drainer = asyncio.ensure_future(self._drain())
        if self._when_written and self._drainer is None:
            self._call_when_written()
        return written

    def _call_when_written(self) -> None:
        waiting, self._when_written = self._when_written, []
        for callback in waiting:
            try:
                callback()
            except Exception:  # noqa: BLE001 - one subscription's pace, not the loop's
                log.exception("outbox: a when_written callback failed")

    def _backlog_append(
        self, serial: int, node_id: str | None, sequence: int, data: bytes, capacity: int
    ) -> bool:
        """Queue one frame behind a paused socket; False once the subscriber is too slow.

        `capacity` 0: a frame that is never coalesced and does not count (control, replay).
        """
        if serial in self._dropped:
            return False
        if not serial:
            self._control_waiting += 1
            if self._control_waiting > MAX_CONTROL_WAITING:
                self._on_slow_consumer(
                    f"connection too slow: more than {MAX_CONTROL_WAITING} protocol messages "
                    "waiting; reconnect, and resubscribe with afterSequence: the last "
                    "sequence you received"
                )
                return False
        elif sequence:
            self._first_waiting.setdefault(serial, sequence)
        frame = _Frame(serial, node_id, sequence, data)
        if capacity and node_id is not None:
            pending = self._pending.get(serial, 0)
            if pending >= capacity:
                older = self._by_node.get((serial, node_id))
                if not older:
                    self._shed(serial, sequence, capacity)
                    return False
                older.popleft().data = None
                pending -= 1
                self._dead += 1
                self._on_coalesced(1)
            self._pending[serial] = pending + 1
            self._by_node.setdefault((serial, node_id), deque()).append(frame)
        if self._backlog is None:
            self._backlog = deque()
        self._backlog.append(frame)
        if self._dead > 256 and self._dead * 2 > len(self._backlog):
            # A socket stalled while coalescing goes on: drop the husks so that memory
            # stays bounded by the live frames.
            self._backlog = deque(f for f in self._backlog if f.data is not None)
            self._dead = 0
        return True

    def _shed(self, serial: int, lost: int, capacity: int) -> None:
        """`serial` cannot keep up: drop its waiting frames, have it told where to resume."""
        after = self._resume_point(serial, lost)
        self._drop_serial(serial)  # nothing after a lost frame
        self._pending.pop(serial, None)
        if self._on_lagging is None:  # no way to tell one subscription: close (1013)
            self._on_slow_consumer(
                f"subscriber too slow: more than {capacity} events waiting; "
                f"resubscribe with afterSequence: {after}"
            )
            return
        # The resume replays them (not coalesced): free their memory now.
        for frame in self._backlog or ():
            if frame.serial == serial and frame.data is not None:
                frame.data = None
                self._dead += 1
        self._on_lagging(serial, after, capacity)

    def _resume_point(self, serial: int, lost: int) -> int:
        """The afterSequence from which a resubscription misses nothing of `serial`.

        Everything of the subscription before its first frame that entered the backlog
        (live or coalesced away since) has been handed to the socket, and reaches the
        client; from that frame on, nothing is sure. Frames are queued in sequence order,
        so that frame's sequence - 1 (or the lost frame's, if none waits) is the point.
        """
        return min(self._first_waiting.get(serial, lost), lost) - 1

    async def _drain(self) -> None:
        """The one task of a paused connection: write the backlog each time it drains."""
        try:
            while True:
                await self.sink.drained()
                if self._closed or not self.sink.is_open():
                    self._clear_backlog()
                    return
                frames = [f.data for f in self._backlog or () if f.data is not None]
                self._clear_backlog()
                if frames:
                    self._write(frames)
                if self.sink.writable():
                    if self._when_written:
                        self._call_when_written()
                    return
                self._backlog_since = time.monotonic()
        finally:
            self._drainer = None

    def _write(self, frames: list[bytes]) -> None:
        self.sink.write(frames)
        self.on_written(len(frames))

    def _drop_serial(self, serial: int) -> None:
        if not self._dropped:
            self._dropped = set()
        self._dropped.add(serial)  # type: ignore[union-attr]

    def _clear_backlog(self) -> None:
        self._backlog = None
        self._pending.clear()
        self._by_node.clear()
        self._first_waiting.clear()
        self._dead = 0
        self._control_waiting = 0

    def drop(self, serial: int) -> None:
        """The subscription ended: its waiting frames will not be sent."""
        self._drop_serial(serial)
        self._pending.pop(serial, None)
        for frame in self._backlog or ():
            if frame.serial == serial:
                frame.data = None
        self._ready = [entry for entry in self._ready if entry[0] != serial]
        # `_frames` holds nothing between bursts (a burst's puts and flush are one loop
        # callback), so there is nothing of `serial` there to drop.

    def close(self) -> None:
        """The connection is gone: drop everything, end the drain task."""
        self._closed = True
        self._ready = []
        self._frames = []
        self._when_written = []
        self._clear_backlog()
        if self._drainer is not None:
            self._drainer.cancel()

    @property
    def waiting(self) -> int:
        """Frames not yet handed to the socket."""
        backlog = sum(1 for f in self._backlog or () if f.data is not None)
        return len(self._frames) + len(self._ready) + backlog

    @property
    def backlog_length(self) -> int:
        """Frames queued behind the paused socket, coalesced husks included (the memory
        held; a gauge reads it at scrape, so no scan)."""
        return len(self._backlog) if self._backlog is not None else 0

    def backlog_age(self, now: float) -> float:
        """Seconds the oldest frame behind the paused socket has waited (0: none waits)."""
        return now - self._backlog_since if self._backlog else 0.0


def lagging_error(after: int, capacity: int) -> dict[str, Any]:
    """A subscription's `error` when it was shed: what happened, and how to resume."""
    return {
        "message": (
            f"subscriber too slow: more than {capacity} events waited for the socket; "
            f"resubscribe with afterSequence: {after} to carry on without a gap"
        ),
        "extensions": {"code": SUBSCRIBER_TOO_SLOW, "afterSequence": after},
    }
