"""Per-connection outbox and per-subscription mailboxes, between actor threads and the loop.

Project actors call `SubscriptionMailbox.deliver` from their own threads; it never blocks.
Frames go into the connection's `Outbox` under a lock, and the connection's writer task is
woken at most once per batch (one `call_soon_threadsafe` however many frames arrived), so a
burst costs one wake-up, not one per frame.

Backpressure is per subscription: at most `capacity` live frames may wait. When a new frame
would exceed it, an undelivered older frame of the same node is dropped (only a node's latest
state matters; the client sees the skipped sequence and can read it from the log). If no
frame of that node is waiting, the subscriber cannot keep up at all: the connection is
closed with 1013 and a reason that says how to resume.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from actors.messages import Selection

SLOW_CONSUMER_CODE = 1013  # "Try Again Later"
_serials = itertools.count(1)


class _Frame:
    __slots__ = ("serial", "node_id", "sequence", "data", "live")

    def __init__(
        self, serial: int, node_id: str | None, sequence: int, data: bytes, live: bool
    ) -> None:
        self.serial = serial  # which subscription; 0 for control frames
        self.node_id = node_id
        self.sequence = sequence
        self.data: bytes | None = data
        self.live = live


class Waker:
    """Wakes the writers of many outboxes with one `call_soon_threadsafe` per burst.

    A project actor delivering one event to the subscribers of ten connections would
    otherwise schedule ten loop callbacks (each a self-pipe write); here the first one
    schedules a single callback and the others join it while it is pending.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._events: list[asyncio.Event] = []
        self._scheduled = False

    def wake(self, event: asyncio.Event) -> None:
        """Set `event` on the loop soon (from any thread)."""
        with self._lock:
            self._events.append(event)
            if self._scheduled:
                return
            self._scheduled = True
        self._loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        with self._lock:
            events, self._events = self._events, []
            self._scheduled = False
        for event in events:
            event.set()


class Outbox:
    """Frames waiting to be written to one connection, in the order they were produced."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        on_slow_consumer: Callable[[str], None],
        on_coalesced: Callable[[int], None] = lambda n: None,
        waker: Waker | None = None,
    ) -> None:
        self._loop = loop
        self._waker = waker or Waker(loop)
        self._lock = threading.Lock()
        self._frames: deque[_Frame] = deque()
        self._pending: dict[int, int] = {}  # subscription serial -> live frames waiting
        self._by_node: dict[tuple[int, str], deque[_Frame]] = {}
        self._dropped: set[int] = set()
        self._dead = 0  # coalesced frames still in _frames (data None)
        self._wakeup = asyncio.Event()
        self._scheduled = False
        self._closed = False
        self._on_slow_consumer = on_slow_consumer
        self._on_coalesced = on_coalesced

    # --- producers (any thread) -------------------------------------------------------

    def put_control(self, data: bytes | str) -> None:
        """A protocol frame (ack, pong, complete, error, query result): never coalesced."""
        if isinstance(data, str):
            data = data.encode()
        with self._lock:
            if self._closed:
                return
            self._frames.append(_Frame(0, None, 0, data, False))
            self._wake_locked()

    def put(
        self,
        serial: int,
        prefix: bytes,
        items: Sequence[tuple[str, int, bytes]],
        capacity: int,
        replay: bool,
    ) -> None:
        slow: str | None = None
        coalesced = 0
        with self._lock:
            if self._closed or serial in self._dropped:
                return
            pending = self._pending.get(serial, 0)
            for node_id, sequence, payload in items:
                frame = _Frame(serial, node_id, sequence, prefix + payload + b"}", not replay)
                if not replay:
                    if pending >= capacity:
                        older = self._by_node.get((serial, node_id))
                        if not older:
                            self._dropped.add(serial)  # nothing after a lost frame
                            slow = (
                                f"subscriber too slow: more than {capacity} events waiting; "
                                "resubscribe with afterSequence"
                            )
                            break
                        older.popleft().data = None
                        pending -= 1
                        coalesced += 1
                        self._dead += 1
                    pending += 1
                    self._by_node.setdefault((serial, node_id), deque()).append(frame)
                self._frames.append(frame)
            self._pending[serial] = pending
            if self._dead > 256 and self._dead * 2 > len(self._frames):
                # A writer stuck behind a stalled socket while coalescing goes on: drop the
                # husks so memory stays bounded by the live frames.
                self._frames = deque(f for f in self._frames if f.data is not None)
                self._dead = 0
            if slow is None:
                self._wake_locked()
        if coalesced:
            self._on_coalesced(coalesced)
        if slow is not None:
            self._loop.call_soon_threadsafe(self._on_slow_consumer, slow)

    def drop(self, serial: int) -> None:
        """The subscription ended: its waiting frames will not be sent."""
        with self._lock:
            self._dropped.add(serial)
            self._pending.pop(serial, None)
            for frame in self._frames:
                if frame.serial == serial:
                    frame.data = None

    def _wake_locked(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._waker.wake(self._wakeup)

    # --- the consumer (the connection's writer task) ----------------------------------

    async def take(self) -> list[bytes] | None:
        """Every frame waiting now, in order; None once the outbox is closed and empty."""
        while True:
            with self._lock:
                if self._frames:
                    frames = [f.data for f in self._frames if f.data is not None]
                    self._frames.clear()
                    self._dead = 0
                    self._pending.clear()
                    self._by_node.clear()
                    self._scheduled = False
                    if frames:
                        return frames
                    continue
                if self._closed:
                    return None
                self._scheduled = False
                self._wakeup.clear()
            await self._wakeup.wait()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake_locked()

    @property
    def waiting(self) -> int:
        return len(self._frames)


class SubscriptionMailbox:
    """A subscription as the project actor sees it (`actors.messages.Subscriber`)."""

    __slots__ = ("key", "selection", "serial", "_outbox", "_prefix", "_capacity", "_on_fail")

    def __init__(
        self,
        outbox: Outbox,
        prefix: bytes,
        selection: Selection,
        capacity: int,
        on_fail: Callable[[list[dict[str, Any]]], None],
    ) -> None:
        self.serial = next(_serials)
        self.key = self.serial
        self.selection = selection
        self._outbox = outbox
        self._prefix = prefix
        self._capacity = capacity
        self._on_fail = on_fail

    def deliver(self, items: Sequence[tuple[str, int, bytes]], *, replay: bool = False) -> None:
        self._outbox.put(self.serial, self._prefix, items, self._capacity, replay)

    def fail(self, errors: list[dict[str, Any]]) -> None:
        self._on_fail(errors)
