"""Presence: who is editing a project's plan, where their cursor is, what they selected.

Kept by the project actor in memory only, never persisted: it is about connections that
are open now, and it ends with them (the gateway sends PresenceLeave when a connection
drops, abrupt disconnects included). One entry per connection: without auth each
connection is its own anonymous user. The gateway rate-limits each connection's updates
(gateway/presence.py) before they reach the actor, so the actor renders what it gets.
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

AVATAR_COLORS = (
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4",
    "#42d4f4", "#f032e6", "#469990", "#9a6324", "#800000",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class PresenceUpdate:
    """A connection joined, or moved its cursor / selection (only `fields` change)."""

    project_id: int
    connection: Hashable
    user_id: str
    user_name: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PresenceLeave:
    """A connection left the plan's editors (a leave mutation, or the socket closed)."""

    project_id: int
    connection: Hashable


def avatar_color(user_id: str) -> str:
    """A stable colour per user, so every page shows the same user alike."""
    return AVATAR_COLORS[zlib.crc32(user_id.encode()) % len(AVATAR_COLORS)]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class PresenceBoard:
    """The current editors of one project, by connection."""

    def __init__(self) -> None:
        self.entries: dict[Hashable, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def update(self, message: PresenceUpdate) -> dict[str, Any]:
        """Apply an update; returns the user's whole presence (the event to send)."""
        entry = self.entries.get(message.connection)
        if entry is None:
            entry = self.entries[message.connection] = {
                "userId": message.user_id,
                "userName": message.user_name,
                "avatarColor": avatar_color(message.user_id),
                "cursorPosition": None,
                "selectedNodeId": None,
                "isActive": True,
                "lastSeen": "",
            }
        for name in ("cursorPosition", "selectedNodeId"):
            if name in message.fields:
                entry[name] = message.fields[name]
        entry["lastSeen"] = _now()
        return dict(entry)

    def leave(self, connection: Hashable) -> dict[str, Any] | None:
        """Remove a connection; returns its last presence marked inactive (or None)."""
        entry = self.entries.pop(connection, None)
        if entry is None:
            return None
        return {**entry, "isActive": False, "lastSeen": _now()}

    def current(self) -> list[dict[str, Any]]:
        return [dict(entry) for entry in self.entries.values()]
