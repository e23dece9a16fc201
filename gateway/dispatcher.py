"""From project actors' threads to the event loop: one wake-up per burst.

Project actors call `SubscriptionMailbox.deliver` (gateway/subscriber.py) from their own
threads; it never blocks: it appends to the process's `Dispatcher` queue, and the first
delivery of a burst schedules one loop callback for the whole burst (one
`call_soon_threadsafe`, however many frames and connections). That callback hands each
delivery to its connection's `Outbox` (gateway/outbox.py) and then writes every touched
connection once, synchronously, as `websockets.broadcast` does: no task, no lock and no
await per frame on the hot path; the frames-written metric is counted once per burst.

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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from gateway.outbox import Item, Outbox

if TYPE_CHECKING:
    from gateway.subscriber import SubscriptionMailbox

# A queued delivery: (outbox, subscription, what, replay). `subscription` None: `what` is a
# whole control frame (bytes); else the subscription's rendered items. A plain tuple, not a
# NamedTuple: one is built per delivery (tens of thousands a second) and a NamedTuple costs
# 4× as much to make (0.45 µs against 0.1, measured); `submit` and `submit_control` name
# the fields at every call site instead.
Delivery = tuple[Outbox, "SubscriptionMailbox | None", "Sequence[Item] | bytes", bool]


class BurstTimings:
    """Where a delivery's time goes on the event loop, summed over bursts (for /metrics and
    the load test's report): `wait_seconds`, from a burst's wake-up being asked for to the
    loop running it (the loop's turn, the GIL); `burst_seconds`, the burst itself (outboxes
    and socket writes). Updated once per burst, on the loop, never per delivery."""

    __slots__ = ("bursts", "deliveries", "wait_seconds", "burst_seconds")

    def __init__(self) -> None:
        self.bursts = 0
        self.deliveries = 0
        self.wait_seconds = 0.0
        self.burst_seconds = 0.0

    def add(self, waited: float, took: float, deliveries: int) -> None:
        self.bursts += 1
        self.deliveries += deliveries
        self.wait_seconds += waited
        self.burst_seconds += took


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
        self._queue: deque[Delivery] = deque()
        self._lock = threading.Lock()
        self._scheduled = False
        self._scheduled_at = 0.0  # when the pending run was asked for (the queue's age)
        self._asked_at = 0.0  # when the pending run, or its continuation, was asked for
        self.max_waiting = max_waiting
        self._loop_thread = threading.get_ident()  # made on the loop (Gateway.dispatcher)
        self._room = threading.Condition(threading.Lock())
        self._blocked = 0  # producer threads waiting for room
        self.producer_waits = 0  # times an actor thread waited for room (a counter)
        self.timings = BurstTimings()

    def submit(
        self,
        outbox: Outbox,
        subscription: SubscriptionMailbox,
        items: Sequence[Item],
        replay: bool,
    ) -> None:
        """From any thread: queue a subscription's rendered items (see `Outbox.put`)."""
        queue = self._queue
        queue.append((outbox, subscription, items, replay))
        if not self._scheduled:
            self._schedule()
        if len(queue) > self.max_waiting:
            self._wait_for_room()

    def submit_control(self, outbox: Outbox, frame: bytes) -> None:
        """From any thread: queue a protocol frame, in order with the deliveries before it."""
        queue = self._queue
        queue.append((outbox, None, frame, True))
        if not self._scheduled:
            self._schedule()
        if len(queue) > self.max_waiting:
            self._wait_for_room()

    def _schedule(self) -> None:
        # A pending run will see what was just queued: it resets the flag before draining.
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
            self._scheduled_at = self._asked_at = time.monotonic()
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
        started = time.monotonic()
        with self._lock:
            self._scheduled = False
            asked_at = self._asked_at
        queue = self._queue
        touched: list[Outbox] = []
        taken = min(len(queue), self.BATCH)
        for _ in range(taken):
            outbox, subscription, what, replay = queue.popleft()
            if subscription is None:
                outbox.put_frame(what)  # type: ignore[arg-type]
            else:
                outbox.put(subscription, what, replay)  # type: ignore[arg-type]
            if not outbox.touched:
                outbox.touched = True
                touched.append(outbox)
        written: dict[Callable[[int], None], int] = {}
        for outbox in touched:
            count = outbox.flush()
            if count:
                counter = outbox.on_written
                written[counter] = written.get(counter, 0) + count
        for counter, count in written.items():
            counter(count)  # once per burst, not per socket write (prometheus locks)
        self.timings.add(started - asked_at, time.monotonic() - started, taken)
        if self._blocked and len(queue) <= self.max_waiting // 2:
            with self._room:
                self._room.notify_all()
        if queue:
            with self._lock:
                if self._scheduled:
                    return
                self._scheduled = True
                self._asked_at = time.monotonic()
            self._loop.call_soon(self._run)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def age(self, now: float) -> float:
        """At most how long the oldest waiting delivery has waited (0: none waits)."""
        return now - self._scheduled_at if self._queue else 0.0
