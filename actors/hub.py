"""The Hub: finds or starts a project's actor, routes messages to it, retires idle ones.

Thread count follows the projects that are active now, not every project ever seen: an
actor with no subscriber and no traffic for `idle_seconds` is stopped. The retirement is
decided by the actor itself (an `IdleCheck` ask, answered after every message routed
before it) while the hub holds its lock, so no message can slip between the check and the
removal and be lost in a dying actor's inbox.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
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
from actors.project import ProjectActor
from storage.db import Database

log = logging.getLogger(__name__)


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
        """
        with self._lock:
            if isinstance(message, StatusChanged):
                self.changes_routed += 1
            ref = self._actors.get(message.project_id)
            if ref is None:
                return
            self._last_routed[message.project_id] = time.monotonic()
            ref.tell(message)

    def subscribe(
        self,
        project_id: int,
        subscriber: Subscriber,
        *,
        after_sequence: int | None = None,
        snapshot: bool = False,
    ) -> None:
        with self._lock:
            ref = self._get_or_start(project_id)
            ref.tell(Subscribe(subscriber, after_sequence, snapshot))

    def unsubscribe(self, project_id: int, key: Hashable) -> None:
        with self._lock:
            ref = self._actors.get(project_id)
            if ref is not None:
                self._last_routed[project_id] = time.monotonic()
                ref.tell(Unsubscribe(key))

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
                ref.tell(Resync())

    def ask(self, project_id: int, message: Any, timeout: float = 10.0) -> Any:
        """Ask a running actor (for tests and the status page); None if not running."""
        with self._lock:
            ref = self._actors.get(project_id)
        return ref.ask(message, timeout=timeout) if ref is not None else None

    def _delivered(self, timestamp: str) -> None:
        if self.on_delivered is not None:
            self.on_delivered(timestamp)

    def _get_or_start(self, project_id: int) -> pykka.ActorRef[ProjectActor]:
        ref = self._actors.get(project_id)
        if ref is None or not ref.is_alive():
            ref = ProjectActor.start(project_id, self.db, self._delivered)
            self._actors[project_id] = ref
            if self._on_actor_started is not None:
                self._on_actor_started(project_id)
        self._last_routed[project_id] = time.monotonic()
        return ref

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
            asked = {
                pid: self._actors[pid].ask(IdleCheck(self.idle_seconds), block=False)
                for pid in candidates
            }
            for project_id, answer in asked.items():
                ref = self._actors[project_id]
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


__all__ = ["Hub", "PlanChanged", "StatusChanged"]
