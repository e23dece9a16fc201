"""From project actors' threads to the event loop: one wake-up per burst.

Project actors call `SubscriptionMailbox.deliver` (gateway/subscriber.py) from their own
threads; it never blocks: it appends to the process's `Dispatcher` queue, and the first
delivery of a burst schedules one loop callback for the whole burst (one
`call_soon_threadsafe`, however many frames and connections). That callback hands each
delivery to its connection's `Outbox` (gateway/outbox.py) and then writes every touched
connection once, synchronously, as `websockets.broadcast` does: no task, no lock and no
await per frame on the hot path.
"""

from __future__ import annotations

import asyncio
import threading
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

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: deque[tuple[Outbox, int, bytes, Sequence[Item] | None, int, bool]] = deque()
        self._lock = threading.Lock()
        self._scheduled = False

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
        self._queue.append((outbox, serial, prefix, items, capacity, replay))
        if self._scheduled:
            return  # the pending run will see it: it resets the flag before draining
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._run)
        except RuntimeError:  # the loop is closed: the server has stopped
            pass

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
        if queue:
            with self._lock:
                if self._scheduled:
                    return
                self._scheduled = True
            self._loop.call_soon(self._run)

    @property
    def waiting(self) -> int:
        return len(self._queue)
