"""PooledActor: pykka actors that share a few threads instead of owning one each.

A project actor per project is the design, and a process may watch ten thousand projects;
`pykka.ThreadingActor` gives each its own OS thread (stack, a futex wake-up per message,
a GIL hand-off per wake-up, a join to retire it). A PooledActor is the same pykka actor
(`ActorRef`, `tell`, `ask`, proxies, the registry, `on_start`/`on_stop`/`on_failure`) whose
inbox, when a message arrives while it is idle, puts the actor on the run queue of one of
a fixed set of `ActorThreads`. That thread takes up to `TURN` messages of the actor, one
at a time and in order, then moves on to the next ready actor. An actor is on at most one
run queue at a time, so it still handles one message at a time, in order; under load a
thread serves many actors per wake-up.

The price: a message handler that blocks holds up the other actors of its thread, so
handlers must not wait for another PooledActor of the same runtime (`ask(...).get()`
from inside a handler could deadlock). Project actors only read the database.
"""

from __future__ import annotations

import itertools
import logging
import queue
import sys
import threading
from collections import deque
from typing import Any, ClassVar

import pykka
from pykka import ActorRegistry
from pykka._envelope import Envelope

log = logging.getLogger(__name__)

DEFAULT_THREADS = 4


class InboxCounts:
    """Process-wide: leavable messages left out of full inboxes (read back by a catch-up)."""

    def __init__(self) -> None:
        self.left_out = 0
        self.lock = threading.Lock()


INBOX_COUNTS = InboxCounts()
TURN = 64  # messages of one actor per turn, so one busy actor cannot starve its thread


class ActorThreads:
    """The threads that run PooledActors; started on first use, daemons."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"actor threads (--actor-threads) must be 1 or more, got {size}")
        self.size = size
        self._queues: list[queue.SimpleQueue[PooledActor]] = []
        self._threads: list[threading.Thread] = []
        self._next = itertools.count()
        self._lock = threading.Lock()

    def assign(self) -> queue.SimpleQueue[PooledActor]:
        """The run queue of the thread a new actor will live on (round robin)."""
        with self._lock:
            if not self._threads:
                for index in range(self.size):
                    ready: queue.SimpleQueue[PooledActor] = queue.SimpleQueue()
                    thread = threading.Thread(
                        target=_run, args=(ready,), name=f"actors-{index}", daemon=True
                    )
                    thread.start()
                    self._queues.append(ready)
                    self._threads.append(thread)
            return self._queues[next(self._next) % self.size]

    @property
    def threads(self) -> list[threading.Thread]:
        return list(self._threads)


def _run(ready: queue.SimpleQueue[PooledActor]) -> None:
    """An actor thread: runs for the life of the process (a daemon)."""
    while True:
        actor = ready.get()
        try:
            actor._take_turn()
        except BaseException:  # noqa: BLE001 - the thread serves other actors too
            log.exception("actor thread: %s failed outside its handlers", actor)


class _Inbox:
    """A PooledActor's inbox (pykka's `ActorInbox` interface), bounded if its class says so
    (see the module docstring)."""

    __slots__ = (
        "envelopes",
        "actor",
        "scheduled",
        "lock",
        "bound",
        "leavable",
        "left_out",
        "catch_up_queued",
        "peak",
    )

    def __init__(self, bound: int | None = None, leavable: tuple[type, ...] = ()) -> None:
        self.envelopes: deque[Envelope[Any]] = deque()
        self.actor: PooledActor | None = None
        self.scheduled = False
        self.lock = threading.Lock()
        self.bound = bound
        self.leavable = leavable
        self.left_out = 0  # leavable messages not queued because the inbox was full
        self.catch_up_queued = False  # a catch-up waits in the inbox, for what was left out
        self.peak = 0  # the most messages seen waiting (a gauge's figure)

    def put(self, envelope: Envelope[Any], /) -> None:
        bound = self.bound
        if bound is not None:
            waiting = len(self.envelopes)
            if waiting >= bound:
                if envelope.reply_to is None and isinstance(envelope.message, self.leavable):
                    self._leave_out()
                    return
            elif waiting >= self.peak:
                self.peak = waiting + 1
        self._queue(envelope)

    def _leave_out(self) -> None:
        """The inbox is full: instead of this message, one catch-up (if none waits)."""
        with INBOX_COUNTS.lock:
            INBOX_COUNTS.left_out += 1
        with self.lock:
            self.left_out += 1
            if self.catch_up_queued:
                return
            self.catch_up_queued = True
        assert self.actor is not None
        self._queue(Envelope(self.actor.catch_up))

    def _queue(self, envelope: Envelope[Any]) -> None:
        self.envelopes.append(envelope)
        if self.scheduled:
            # Its turn is pending or running: the turn's end clears the flag and only then
            # looks at the envelopes, so this one is seen (no lock on this common path).
            return
        self.claim()

    def claim(self) -> None:
        """Put the actor on its thread's run queue unless someone already did."""
        with self.lock:
            if self.scheduled:
                return
            self.scheduled = True
        assert self.actor is not None
        self.actor._ready_queue.put(self.actor)

    def get(self) -> Envelope[Any]:
        return self.envelopes.popleft()

    def __len__(self) -> int:
        return len(self.envelopes)

    def empty(self) -> bool:
        return not self.envelopes


class PooledActor(pykka.Actor):
    """A pykka actor run on one of a few shared threads (see the module docstring)."""

    runtime: ClassVar[ActorThreads | None] = None
    # A bounded inbox (see the module docstring): None, unbounded.
    inbox_bound: ClassVar[int | None] = None
    # The messages that may be left out of a full inbox, and the one queued instead: the
    # actor's handler for it must recover what was left out.
    leavable: ClassVar[tuple[type, ...]] = ()
    catch_up: ClassVar[Any] = None

    @classmethod
    def use_threads(cls, size: int) -> None:
        """Run actors started from now on on `size` shared threads (a process's setting:
        actors already running keep their thread)."""
        if PooledActor.runtime is None or PooledActor.runtime.size != size:
            PooledActor.runtime = ActorThreads(size)

    @classmethod
    def _create_actor_inbox(cls) -> _Inbox:  # type: ignore[override]
        return _Inbox(cls.inbox_bound, cls.leavable)

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return pykka.ThreadingFuture()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        inbox = self.actor_inbox
        assert isinstance(inbox, _Inbox)
        inbox.actor = self
        self._needs_setup = True
        self._ready_queue: queue.SimpleQueue[PooledActor]

    def _start_actor_loop(self) -> None:
        if PooledActor.runtime is None:
            PooledActor.runtime = ActorThreads(DEFAULT_THREADS)
        self._ready_queue = PooledActor.runtime.assign()
        inbox = self.actor_inbox
        assert isinstance(inbox, _Inbox)
        with inbox.lock:
            inbox.scheduled = True  # the first turn runs on_start
        self._ready_queue.put(self)

    def _take_turn(self) -> None:
        """Handle up to TURN waiting messages, then give the thread to the next actor."""
        inbox = self.actor_inbox
        assert isinstance(inbox, _Inbox)
        if self._needs_setup:
            self._needs_setup = False
            self._actor_loop_setup()
        envelopes = inbox.envelopes
        for _ in range(TURN):
            if self.actor_stopped.is_set() or not envelopes:
                break
            self._handle_envelope(envelopes.popleft())
        if self.actor_stopped.is_set():
            self._actor_loop_teardown()
            return  # never scheduled again: `tell` refuses a stopped actor
        if envelopes:
            self._ready_queue.put(self)  # still scheduled: another turn later
            return
        with inbox.lock:
            inbox.scheduled = False
        if envelopes:  # arrived after the check above, its sender saw `scheduled`
            inbox.claim()

    def _handle_envelope(self, envelope: Envelope[Any]) -> None:
        """One message, with pykka's own failure rules (as `Actor._actor_loop_running`)."""
        if envelope.message is self.catch_up and self.catch_up is not None:
            inbox = self.actor_inbox
            assert isinstance(inbox, _Inbox)
            with inbox.lock:  # from now on a left-out message queues a new catch-up: it
                inbox.catch_up_queued = False  # may have been sent after this one reads
        try:
            response = self._handle_receive(envelope.message)
            if envelope.reply_to is not None:
                envelope.reply_to.set(response)
        except Exception:
            if envelope.reply_to is not None:
                log.info("Exception returned from %s to caller:", self, exc_info=sys.exc_info())
                envelope.reply_to.set_exception()
            else:
                self._handle_failure(*sys.exc_info())
                try:
                    self.on_failure(*sys.exc_info())
                except Exception:  # noqa: BLE001
                    self._handle_failure(*sys.exc_info())
        except BaseException:  # noqa: BLE001
            log.debug("%r in %s. Stopping all actors.", sys.exc_info()[1], self)
            self._stop()
            ActorRegistry.stop_all()


__all__ = ["INBOX_COUNTS", "ActorThreads", "PooledActor"]
