"""The Hub: finds or starts a project's actor, routes messages to it, retires idle ones.

Thread count follows the projects that are active now, not every project ever seen: an
actor with no subscriber and no traffic for `idle_seconds` is stopped. The retirement is
decided by the actor itself (an `IdleCheck` ask, answered after every message routed
before it) while the hub holds its lock, so no message can slip between the check and the
removal and be lost in a dying actor's inbox.

Supervision. A project actor that cannot read the event log (the database is away) does
not fail: it stops delivering, tells the hub it is behind, and the hub's supervisor tells
it to catch up every `RETRY_SECONDS` until it can (see ProjectActor). An actor that does
fail (a bug: an exception in one of its handlers) hands its subscribers, and those whose
Subscribe was still in its inbox, to the hub, which starts a new actor for the project and
subscribes them again with `afterSequence` = the last sequence the old one delivered: the
new actor replays the rest from the log, so the watchers see no gap and no duplicate.
Where that cannot be done (the database is away too), each subscriber gets a protocol
`error` saying to resubscribe with `afterSequence: N`. Messages routed to the dead actor
meanwhile are not lost: the new actor catches up from the log once it has them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import pykka

from actors.messages import (
    BusMessage,
    IdleCheck,
    PlanChanged,
    Resync,
    StatusChanged,
    Subscribe,
    Subscriber,
    Unsubscribe,
)
from actors.project import ProjectActor, resubscribe_error
from storage.db import Database
from storage.retry import reason

log = logging.getLogger(__name__)

RETRY_SECONDS = 0.5  # how often an actor that could not read the log tries again


class Hub:
    def __init__(
        self,
        db: Database,
        *,
        idle_seconds: float = 60.0,
        reap_interval: float | None = None,
        on_first_subscriber: Callable[[int], None] | None = None,
        on_last_actor_gone: Callable[[int], None] | None = None,
    ) -> None:
        self.db = db
        # Set by the gateway: told the timestamp of every change delivered to subscribers.
        self.on_delivered: Callable[[str], None] | None = None
        self.changes_routed = 0  # StatusChanged messages this process's hub received
        self.idle_seconds = idle_seconds
        self._actors: dict[int, pykka.ActorRef[ProjectActor]] = {}
        self._last_routed: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        # Hooks for a bus that listens per project (Redis): listen while an actor exists.
        self._on_actor_started = on_first_subscriber
        self._on_actor_stopped = on_last_actor_gone
        self.actors_replaced = 0  # project actors that failed and were started again
        self.route_failures = 0  # messages that could not be handed to an actor
        # Subscribers that left while their actor was dead, before its replacement.
        self._gone: dict[int, set[Hashable]] = {}
        self._behind: set[int] = set()  # actors to tell Resync on the supervisor's next tick
        self._behind_lock = threading.Lock()
        self._supervisor = threading.Thread(
            target=self._supervise_loop, name="hub-supervisor", daemon=True
        )
        self._supervisor.start()
        interval = reap_interval if reap_interval is not None else max(idle_seconds / 4, 0.05)
        self._reaper = threading.Thread(
            target=self._reap_loop, args=(interval,), name="hub-reaper", daemon=True
        )
        self._reaper.start()

    # --- routing --------------------------------------------------------------------------

    def route(self, message: BusMessage) -> None:
        """Deliver a bus message to the project's actor, if one is running.

        With no actor there is no subscriber: nothing to do. A later subscriber catches up
        through the event log, never through messages it was not there for.

        Never raises (the bus calls it after a commit: a routing failure must not reach
        the executor): a message that cannot be handed over is counted, and the project's
        actor catches up from the log (it is dead: its replacement does; see `_replace`).
        """
        with self._lock:
            if isinstance(message, StatusChanged):
                self.changes_routed += 1
            ref = self._actors.get(message.project_id)
            if ref is None:
                return
            self._last_routed[message.project_id] = time.monotonic()
            try:
                ref.tell(message)
            except pykka.ActorDeadError:
                self.route_failures += 1  # its replacement catches up from the log

    def subscribe(
        self,
        project_id: int,
        subscriber: Subscriber,
        *,
        after_sequence: int | None = None,
        snapshot: bool = False,
    ) -> None:
        """Hand a subscriber to the project's actor (started if need be).

        If the actor cannot start (its first read of the log failed: the database is
        away), the subscriber is told so at once, with what to resubscribe with.
        """
        with self._lock:
            try:
                ref = self._get_or_start(project_id)
            except Exception as error:  # noqa: BLE001 - the subscriber must hear, not hang
                log.warning("project %s: starting its actor failed: %s", project_id, error)
                subscriber.fail([resubscribe_error(project_id, after_sequence, snapshot, error)])
                return
            ref.tell(Subscribe(subscriber, after_sequence, snapshot))

    def unsubscribe(self, project_id: int, key: Hashable) -> None:
        with self._lock:
            ref = self._actors.get(project_id)
            if ref is not None:
                self._last_routed[project_id] = time.monotonic()
                try:
                    ref.tell(Unsubscribe(key))
                except pykka.ActorDeadError:  # failed: its replacement must not take it
                    self._gone.setdefault(project_id, set()).add(key)

    def tell_presence(self, project_id: int, message: Any) -> None:
        """A presence update or leave (actors/presence.py): it starts the actor, which
        keeps presence in memory; a leave for a project without an actor is nothing."""
        with self._lock:
            if message.__class__.__name__ == "PresenceLeave" and project_id not in self._actors:
                return
            self._get_or_start(project_id).tell(message)

    def resync_all(self) -> None:
        """After the bus may have lost messages: every actor catches up from the log."""
        with self._lock:
            for ref in self._actors.values():
                _resync(ref)

    def resync(self, project_id: int) -> None:
        """The project's actor (if any) catches up from the log (a repair after a failed
        routing: see InProcessBus.publish)."""
        with self._lock:
            ref = self._actors.get(project_id)
            if ref is None:
                return
            _resync(ref)

    # --- supervision ----------------------------------------------------------------------

    def _behind_on_log(self, project_id: int) -> None:
        """From an actor's thread: it could not read the log; have it try again later."""
        with self._behind_lock:
            self._behind.add(project_id)

    def _supervise_loop(self) -> None:
        while not self._stopping.wait(RETRY_SECONDS):
            with self._behind_lock:
                behind, self._behind = self._behind, set()
            if not behind:
                continue
            with self._lock:
                for project_id in behind:
                    ref = self._actors.get(project_id)
                    if ref is None:
                        continue
                    _resync(ref)

    def _failed(
        self,
        project_id: int,
        dead: pykka.ActorRef[ProjectActor],
        handover: list[Subscribe],
        last_sequence: int,
    ) -> None:
        """From a failed actor's thread: replace it on another thread (starting an actor
        reads the database, and must not hold up the others of this thread)."""
        threading.Thread(
            target=self._replace,
            args=(project_id, dead, handover, last_sequence),
            name=f"hub-replace-{project_id}",
            daemon=True,
        ).start()

    def _replace(
        self,
        project_id: int,
        dead: pykka.ActorRef[ProjectActor],
        handover: list[Subscribe],
        last_sequence: int,
    ) -> None:
        """Start a new actor for a failed one's subscribers; they resume after the last
        sequence it delivered (Subscribes it had not handled yet keep their own)."""
        with self._lock:
            if self._stopping.is_set():
                return
            gone = self._gone.pop(project_id, set())
            handover = [m for m in handover if m.subscriber.key not in gone]
            current = self._actors.get(project_id)
            try:
                if current is not None and current is not dead and current.is_alive():
                    ref = current  # a subscribe started one meanwhile
                else:
                    self._actors.pop(project_id, None)
                    ref = self._get_or_start(project_id, notify=current is None)
            except Exception as error:  # noqa: BLE001 - tell them, do not leave them silent
                self._actors.pop(project_id, None)
                self._last_routed.pop(project_id, None)
                if self._on_actor_stopped is not None:
                    self._on_actor_stopped(project_id)
                log.error(
                    "project %s: its actor failed and could not be started again (%s): "
                    "%d subscribers told to resubscribe",
                    project_id,
                    reason(error),
                    len(handover),
                )
                for m in handover:
                    after = m.after_sequence if m.after_sequence is not None else last_sequence
                    m.subscriber.fail([resubscribe_error(project_id, after, False, error)])
                return
            self.actors_replaced += 1
            for m in handover:
                ref.tell(m)
            ref.tell(Resync())  # what was routed to the dead actor, from the log
        log.warning(
            "project %s: its actor failed; a new one took its %d subscribers from sequence %d",
            project_id,
            len(handover),
            last_sequence,
        )

    def ask(self, project_id: int, message: Any, timeout: float = 10.0) -> Any:
        """Ask a running actor (for tests and the status page); None if not running."""
        with self._lock:
            ref = self._actors.get(project_id)
        if ref is None:
            return None
        try:
            return ref.ask(message, timeout=timeout)
        except pykka.ActorDeadError:
            return None  # failed, and being replaced

    def _delivered(self, timestamp: str) -> None:
        if self.on_delivered is not None:
            self.on_delivered(timestamp)

    def _get_or_start(
        self, project_id: int, *, notify: bool = True
    ) -> pykka.ActorRef[ProjectActor]:
        ref = self._actors.get(project_id)
        if ref is None or not ref.is_alive():
            ref = ProjectActor.start(
                project_id,
                self.db,
                self._delivered,
                on_behind=self._behind_on_log,
                on_failed=self._failed,
            )
            started = project_id not in self._actors  # not a replacement of a dead one
            self._actors[project_id] = ref
            if notify and started and self._on_actor_started is not None:
                self._on_actor_started(project_id)
        self._last_routed[project_id] = time.monotonic()
        return ref

    # --- load ----------------------------------------------------------------------------

    def inbox_load(self) -> InboxLoad:
        """What waits in the project actors' inboxes now (for /metrics, on the event loop:
        without the hub's lock, which reaping holds for up to a second)."""
        while True:
            try:
                refs = list(self._actors.values())
                break
            except RuntimeError:  # changed while copied: again
                continue
        load = InboxLoad()
        for ref in refs:
            envelopes = getattr(ref.actor_inbox, "envelopes", None)
            if not envelopes:
                continue
            waiting = len(envelopes)
            load.total += waiting
            load.largest = max(load.largest, waiting)
            try:
                timestamp = getattr(envelopes[0].message, "timestamp", None)
            except IndexError:  # taken meanwhile
                continue
            if isinstance(timestamp, str) and (load.oldest is None or timestamp < load.oldest):
                load.oldest = timestamp
        return load

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def actor_count(self) -> int:
        return len(self._actors)

    def project_ids(self) -> list[int]:
        with self._lock:
            return list(self._actors)

    def reap_idle(self) -> int:
        """Stop every actor idle for `idle_seconds`; returns how many were stopped."""
        now = time.monotonic()
        stopped = 0
        with self._lock:
            candidates = [
                pid
                for pid, routed in self._last_routed.items()
                if now - routed >= self.idle_seconds and pid in self._actors
            ]
            # Ask them all at once, then collect: the actors answer in parallel on their
            # threads, and every answer comes after the messages routed before it.
            asked: dict[int, pykka.Future[Any] | None] = {}
            for pid in candidates:
                try:
                    asked[pid] = self._actors[pid].ask(IdleCheck(self.idle_seconds), block=False)
                except pykka.ActorDeadError:
                    asked[pid] = None  # failed: its replacement is on its way
            for project_id, answer in asked.items():
                ref = self._actors[project_id]
                if answer is None:
                    continue
                try:
                    idle = answer.get(timeout=1.0)
                except (pykka.Timeout, pykka.ActorDeadError):
                    idle = not ref.is_alive()
                if not idle:
                    continue
                del self._actors[project_id]
                del self._last_routed[project_id]
                ref.stop(block=False)
                stopped += 1
                if self._on_actor_stopped is not None:
                    self._on_actor_stopped(project_id)
        if stopped:
            log.debug("hub: retired %d idle project actors", stopped)
        return stopped

    def _reap_loop(self, interval: float) -> None:
        while not self._stopping.wait(interval):
            try:
                self.reap_idle()
            except Exception:  # noqa: BLE001 - the reaper must outlive one bad round
                log.exception("hub: reaping idle project actors failed")

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            refs = list(self._actors.values())
            self._actors.clear()
            self._last_routed.clear()
        for ref in refs:
            try:
                ref.stop(block=True, timeout=5)
            except (pykka.Timeout, pykka.ActorDeadError):
                pass
        self._reaper.join(timeout=5)
        self._supervisor.join(timeout=5)


@dataclass(slots=True)
class InboxLoad:
    """Messages waiting in project actors' inboxes: in all, in the fullest one, and the
    timestamp of the oldest change at the head of one (its lag; None: none waits)."""

    total: int = 0
    largest: int = 0
    oldest: str | None = None


def _resync(ref: pykka.ActorRef[ProjectActor]) -> None:
    """Have an actor catch up from the log; a dead one is skipped: its replacement
    catches up when it starts."""
    try:
        ref.tell(Resync())
    except pykka.ActorDeadError:
        pass


__all__ = ["Hub", "PlanChanged", "StatusChanged"]
