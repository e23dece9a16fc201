"""What every resolver may use: the process's services, and who is asking.

One `Services` per process (built by gateway/app.py); one `RequestContext` per operation
(built by the connection or the HTTP route that runs it), passed to graphql-core as the
execution context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphql import GraphQLError

from actors.bus import Bus
from actors.executors import WorkSink
from actors.hub import Hub
from actors.state import StateStore
from storage.db import Database


@dataclass
class Services:
    """Everything a resolver may use; one per process."""

    db: Database
    store: StateStore
    bus: Bus
    hub: Hub
    work: WorkSink | None = None


@dataclass(slots=True)
class RequestContext:
    """Per operation: the services and who is asking."""

    services: Services
    # Project ids the caller may touch; None means every project (auth off, or admin).
    scope: frozenset[int] | None = None
    admin: bool = True
    # The WebSocket connection's presence (gateway/presence.ConnectionPresence), which also
    # names its editor; None over plain HTTP.
    presence: Any = None

    @property
    def user_id(self) -> str | None:
        """The editor named in plan-edit payloads (set per connection by the gateway)."""
        return None if self.presence is None else self.presence.user_id

    def check_project(self, project_id: int) -> None:
        if self.scope is not None and project_id not in self.scope:
            raise GraphQLError(
                f"this token is not allowed to access project {project_id}",
                extensions={"code": "FORBIDDEN"},
            )
