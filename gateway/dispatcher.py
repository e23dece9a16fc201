"""From project actors' threads to the event loop: one wake-up per burst.

Project actors call `SubscriptionMailbox.deliver` (gateway/subscriber.py) from their own
threads; it never blocks: it appends to the process's `Dispatcher` queue, and the first
delivery of a burst schedules one loop callback for the whole burst (one
`call_soon_threadsafe`, however many frames and connections). That callback hands each
delivery to its connection's `Outbox` (gateway/outbox.py) and then writes every touched
connection once, synchronously, as `websockets.broadcast` does: no task, no lock and no
await per frame on the hot path.

Bounded. At most about `max_waiting` deliveries wait for the loop: past that, an actor
thread that submits waits (backpressure) until the loop has taken the queue down to half,
the loop itself never waits (its own control frames always go in). While actor threads
wait, their inboxes fill, and a full inbox leaves logged changes to the event log
(actors/runtime.py), so the backpressure costs memory nowhere and loses nothing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Sequence

from gateway.outbox import Item, Outbox


class Dispatcher:
    """Carries deliveries from actor threads to the loop, one wake-up per burst.

    `submit` appends to a deque (atomic under the GIL) and schedules `_run` only when no run
    is pending, so a project actor delivering an event to the subscribers of ten
    connections costs one `call_soon_threadsafe`, not ten. `_run` hands each delivery to its
    outbox, then flushes every touched outbox once: one socket write per connection per
    burst, however many frames it got.
    """

    # Entries handled per loop callback before yielding to sockets and timers.
    BATCH = 5000
    MAX_WAITING = 50_000  # deliveries queued before actor threads wait (see the docstring)

    def __init__(self, loop: asyncio.AbstractEventLoop, max_waiting: int = MAX_WAITING) -> None:
        self._loop = loop
        self._queue: deque[tuple[Outbox, int, bytes, Sequence[Item] | None, int, bool]] = deque()
        self._lock = threading.Lock()
        self._scheduled = False
        self._scheduled_at = 0.0  # when the pending run was asked for (the queue's age)
        self.max_waiting = max_waiting
        self._loop_thread = threading.get_ident()  # made on the loop (Gateway.dispatcher)
        self._room = threading.Condition(threading.Lock())
        self._blocked = 0  # producer threads waiting for room
        self.producer_waits = 0  # times an actor thread waited for room (a counter)

    def submit(
        self,
        outbox: Outbox,
        serial: int,
        prefix: bytes,
        items: Sequence[Item] | None,
        capacity: int,
        replay: bool,
    ) -> None:
        """From any thread: queue a delivery for the loop (see `Outbox.put`)."""
        queue = self._queue
        queue.append((outbox, serial, prefix, items, capacity, replay))
        # Not scheduled yet: schedule. (If it is, the pending run will see this: it resets
        # the flag before draining.)
        if not self._scheduled:
            self._schedule()
        if len(queue) > self.max_waiting:
            self._wait_for_room()

    def _schedule(self) -> None:
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
            self._scheduled_at = time.monotonic()
        try:
            self._loop.call_soon_threadsafe(self._run)
        except RuntimeError:  # the loop is closed: the server has stopped
            pass

    def _wait_for_room(self) -> None:
        """An actor thread: wait until the loop took the queue down to half its bound."""
        if threading.get_ident() == self._loop_thread:
            return  # the loop never waits for itself
        low = self.max_waiting // 2
        with self._room:
            self._blocked += 1
            self.producer_waits += 1
            try:
                while len(self._queue) > low and self._loop.is_running():
                    self._room.wait(0.1)
            finally:
                self._blocked -= 1

    def _run(self) -> None:
        with self._lock:
            self._scheduled = False
        queue = self._queue
        touched: list[Outbox] = []
        for _ in range(min(len(queue), self.BATCH)):
            outbox, serial, prefix, items, capacity, replay = queue.popleft()
            outbox.put(serial, prefix, items, capacity, replay)
            if not outbox.touched:
                outbox.touched = True
                touched.append(outbox)
        for outbox in touched:
            outbox.flush()
        if self._blocked and len(queue) <= self.max_waiting // 2:
            with self._room:
                self._room.notify_all()
        if queue:
            with self._lock:
                if self._scheduled:
                    return
                self._scheduled = True
            self._loop.call_soon(self._run)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def age(self, now: float) -> float:
        """At most how long the oldest waiting delivery has waited (0: none waits)."""
        return now - self._scheduled_at if self._queue else 0.0
