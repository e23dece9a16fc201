"""One connection's presence: who it is, which plans it joined, and its rate limit.

A cursor moving at 60 Hz must not flood the other editors: updates of a connection are
merged (latest value per field wins) and sent to the project actor at most every
`MIN_INTERVAL` seconds per project; a leave or the connection's end drops what is
pending and sends PresenceLeave. Resolvers call in from worker threads; the timing runs
on the connection's event loop.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from actors.hub import Hub
from actors.presence import PresenceLeave, PresenceUpdate

MIN_INTERVAL = 0.1  # at most 10 updates per second per connection and project

# Never written to: a connection that has joined no plan reads these.
_NONE_JOINED: frozenset[int] = frozenset()  # type: ignore[assignment]
_NO_PENDING: dict[int, dict[str, Any]] = {}
_NO_LAST_SENT: dict[int, float] = {}
_NO_TIMERS: dict[int, asyncio.TimerHandle] = {}


class ConnectionPresence:
    """Identity and throttled presence updates of one socket.

    Every connection has one, and most never join a plan: the per-plan state is made on
    the first join and the anonymous identity on first use (about 1 KiB per socket less).
    """

    __slots__ = (
        "_key",
        "_last_sent",
        "_pending",
        "_timers",
        "_user_id",
        "_user_name",
        "ended",
        "hub",
        "joined",
        "loop",
        "pool",
        "sent",
    )

    def __init__(self, hub: Hub, loop: asyncio.AbstractEventLoop, pool: Any = None) -> None:
        self.hub = hub
        self.loop = loop
        self.pool = pool
        self._key: str | None = None
        self._user_id: str | None = None
        self._user_name: str | None = None
        # Shared empty containers until the first join gives this connection its own.
        self.joined: set[int] = _NONE_JOINED
        self._pending: dict[int, dict[str, Any]] = _NO_PENDING
        self._last_sent: dict[int, float] = _NO_LAST_SENT
        self._timers: dict[int, asyncio.TimerHandle] = _NO_TIMERS
        self.sent = 0  # updates that reached the actor (tests read it)
        self.ended = False

    @property
    def key(self) -> str:
        """This connection's presence key (one per socket, also for a user on two tabs)."""
        if self._key is None:
            self._key = uuid.uuid4().hex
        return self._key

    @property
    def user_id(self) -> str:
        return self._user_id or "anon-" + self.key[:8]

    @property
    def user_name(self) -> str:
        return self._user_name or self._user_id or "Anonymous " + self.key[:4]

    def name(self, user_id: str | None, user_name: str | None) -> None:
        """Set by connection_init: a token's user, and/or a userName in the payload."""
        if user_id:
            self._user_id = user_id
            self._user_name = None
        if user_name:
            self._user_name = str(user_name)[:100]

    # --- from resolvers (any thread) ----------------------------------------------------

    def update(self, project_id: int, fields: dict[str, Any]) -> None:
        self.loop.call_soon_threadsafe(self._merge, project_id, fields)

    def leave(self, project_id: int) -> None:
        self.loop.call_soon_threadsafe(self._leave, project_id)

    def end(self) -> None:
        """The connection is gone (on the loop): leave every plan it joined. A resolver
        still running then cannot join again afterwards."""
        self.ended = True
        for project_id in list(self.joined):
            self._leave(project_id)

    # --- on the loop --------------------------------------------------------------------

    def _merge(self, project_id: int, fields: dict[str, Any]) -> None:
        if self.ended:
            return
        if self.joined is _NONE_JOINED:
            self.joined = set()
            self._pending, self._last_sent, self._timers = {}, {}, {}
        self.joined.add(project_id)
        self._pending.setdefault(project_id, {}).update(fields)
        wait = self._last_sent.get(project_id, 0.0) + MIN_INTERVAL - time.monotonic()
        if wait <= 0:
            self._flush(project_id)
        elif project_id not in self._timers:
            self._timers[project_id] = self.loop.call_later(wait, self._flush, project_id)

    def _flush(self, project_id: int) -> None:
        self._timers.pop(project_id, None)
        fields = self._pending.pop(project_id, None)
        if fields is None or project_id not in self.joined:
            return
        self._last_sent[project_id] = time.monotonic()
        self.sent += 1
        message = PresenceUpdate(project_id, self.key, self.user_id, self.user_name, fields)
        self._tell(project_id, message)

    def _leave(self, project_id: int) -> None:
        timer = self._timers.pop(project_id, None)
        if timer is not None:
            timer.cancel()
        self._pending.pop(project_id, None)
        if project_id in self.joined:
            self.joined.discard(project_id)
            self._tell(project_id, PresenceLeave(project_id, self.key))

    def _tell(self, project_id: int, message: Any) -> None:
        # The hub's lock may be held while it retires actors: not on the loop.
        try:
            self.loop.run_in_executor(self.pool, self.hub.tell_presence, project_id, message)
        except RuntimeError:  # the pool is shut down: the server is stopping
            self.hub.tell_presence(project_id, message)
