"""Per-connection backpressure: a connection's frames, written in the order produced.

The Dispatcher (gateway/dispatcher.py) brings deliveries to the loop; an `Outbox` writes
them. While a connection's socket accepts data, frames go straight to it
(gateway/socket_writer.py). When its write buffer is full (the transport paused
writing), frames wait in the outbox's backlog until it drains; there at most `capacity`
live frames per subscription may wait. When a new frame would exceed that, an undelivered
older frame of the same node is dropped (only a node's latest state matters; the client
sees the skipped sequence and can read it from the log). If no frame of that node is
waiting, the subscriber cannot keep up at all: the connection is closed with 1013 and a
reason that says where to resume without a gap (`afterSequence: N`, N being the last
sequence of the subscription before the first frame that may not have reached the socket).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.dispatcher import Dispatcher

SLOW_CONSUMER_CODE = 1013  # "Try Again Later"

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
        on_coalesced: Callable[[int], None] = lambda n: None,
        on_written: Callable[[int], None] = _not_counted,
    ) -> None:
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
        self._drainer: asyncio.Task[None] | None = None
        # Subscriptions whose frames are no longer sent; the shared empty set until the
        # first (a set is 216 bytes, and most connections never need one).
        self._dropped: set[int] | frozenset[int] = _NO_SERIALS
        self._closed = False
        self._on_slow_consumer = on_slow_consumer
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

    def put_frame(self, frame: bytes) -> None:
        """Queue a whole control frame (the Dispatcher's half of `put_control`)."""
        if self._closed:
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
        frames = self._frames
        if frames:
            self._frames = []
            if self._closed:
                return 0
            self.sink.write(frames)  # the socket took frames at the burst's start
            return len(frames)
        ready, self._ready = self._ready, []
        if not ready or self._closed:
            return 0
        if self._drainer is None and self.sink.writable():
            self.sink.write([frame for _serial, _node, _sequence, frame, _capacity in ready])
            return len(ready)
        if not self.sink.is_open():
            return 0  # closing: nothing more will be written
        for serial, node_id, sequence, frame, capacity in ready:
            self._backlog_append(serial, node_id, sequence, frame, capacity)
        if self._drainer is None and self._backlog:
            self._drainer = asyncio.ensure_future(self._drain())
        return 0

    def _backlog_append(
        self, serial: int, node_id: str | None, sequence: int, data: bytes, capacity: int
    ) -> bool:
        """Queue one frame behind a paused socket; False once the subscriber is too slow.

        `capacity` 0: a frame that is never coalesced and does not count (control, replay).
        """
        if serial in self._dropped:
            return False
        frame = _Frame(serial, node_id, sequence, data)
        if capacity and node_id is not None:
            pending = self._pending.get(serial, 0)
            if pending >= capacity:
                older = self._by_node.get((serial, node_id))
                if not older:
                    self._drop_serial(serial)  # nothing after a lost frame
                    self._on_slow_consumer(
                        f"subscriber too slow: more than {capacity} events waiting; "
                        f"resubscribe with afterSequence: {self._resume_point(serial, sequence)}"
                    )
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

    def _resume_point(self, serial: int, lost: int) -> int:
        """The afterSequence from which a resubscription misses nothing of `serial`.

        Everything of the subscription before its first frame still in the backlog (live
        or coalesced away) has been handed to the socket, and reaches the client before
        the close; from that frame on, nothing is sure. Frames are queued in sequence
        order, so that frame's sequence - 1 (or the lost frame's, if none waits) is the
        point. Once per slow verdict: a scan of one backlog.
        """
        for frame in self._backlog or ():
            if frame.serial == serial and frame.sequence:
                return min(frame.sequence, lost) - 1
        return lost - 1

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
                    return
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
        self._dead = 0

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
        self._clear_backlog()
        if self._drainer is not None:
            self._drainer.cancel()

    @property
    def waiting(self) -> int:
        """Frames not yet handed to the socket."""
        backlog = sum(1 for f in self._backlog or () if f.data is not None)
        return len(self._frames) + len(self._ready) + backlog
