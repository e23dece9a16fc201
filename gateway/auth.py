"""Who may do what: bearer tokens from the `connection_init` payload, and Origin checks.

Tokens are stored hashed (storage.tokens.create_token) and scoped to projects, or admin.
Auth is on whenever the server listens on anything but loopback: a service reachable from
other machines never runs open by accident.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from storage import tokens
from storage.db import Database


@dataclass(frozen=True, slots=True)
class Grant:
    """What a connection may touch: `projects` None means every project."""

    projects: frozenset[int] | None
    admin: bool
    # Who the token names (presence, plan edits' userId); None without auth.
    user: str | None = None


OPEN = Grant(projects=None, admin=True)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_required(host: str, forced: bool | None) -> bool:
    return forced if forced is not None else not is_loopback(host)


class Authenticator:
    def __init__(self, db: Database, enabled: bool) -> None:
        self.db = db
        self.enabled = enabled

    def __call__(self, payload: dict[str, Any] | None) -> Grant | None:
        """The connection's grant, or None to refuse it (closed with 4403)."""
        if not self.enabled:
            return OPEN
        raw = bearer_token(payload)
        if raw is None:
            return None
        with self.db.read() as s:
            token = tokens.find_token(s, raw)
            if token is None:
                return None
            user = token.name or f"token-{token.id}"
            if token.admin:
                return Grant(projects=None, admin=True, user=user)
            projects = frozenset(int(p) for p in token.project_ids)
            return Grant(projects=projects, admin=False, user=user)


def bearer_token(payload: dict[str, Any] | None) -> str | None:
    if not isinstance(payload, dict):
        return None
    value = payload.get("authorization") or payload.get("Authorization")
    if not isinstance(value, str):
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def origin_allowed(origin: str | None, host_header: str | None, allowed: list[str]) -> bool:
    """No Origin (not a browser), the page's own origin, or one of the allow-list."""
    if origin is None:
        return True
    if origin in allowed or "*" in allowed:
        return True
    return bool(host_header) and urlsplit(origin).netloc == host_header
