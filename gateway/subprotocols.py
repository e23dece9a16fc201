"""Which protocol core a WebSocket connection speaks, by the subprotocol its client asked for.

Two subprotocols share one endpoint: ``graphql-transport-ws`` (graphql-ws, the current one;
gateway/protocol.py) and the legacy ``graphql-ws`` (subscriptions-transport-ws, Apollo 2/3's
``WebSocketLink``; gateway/legacy_protocol.py). Both cores have the same methods and emit the
same actions, so the server's connection code is one; this module is the one place that
knows the names, the order of preference and what each core needs (its keep-alive).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway import legacy_protocol, protocol
from gateway.protocol import Action, State

__all__ = ["PREFERENCE", "ProtocolCore", "SelectedCore", "core_for", "select"]

PREFERENCE: tuple[str, ...] = (protocol.SUBPROTOCOL, legacy_protocol.SUBPROTOCOL)
"""Supported subprotocols, most preferred first: a client offering both gets the current one."""


class ProtocolCore(Protocol):
    """What the server needs of a protocol core (both cores implement it)."""

    @property
    def state(self) -> State: ...

    def receive(self, data: str | bytes) -> list[Action]: ...
    def accept(self, payload: dict[str, Any] | None = None) -> list[Action]: ...
    def reject(self, reason: str = ...) -> list[Action]: ...
    def init_timeout(self) -> list[Action]: ...
    def keepalive(self) -> list[Action]: ...
    def complete(self, id: str) -> list[Action]: ...
    def error(self, id: str, errors: list[dict[str, Any]]) -> list[Action]: ...
    def close(self, code: int, reason: str) -> list[Action]: ...
    def next_text(self, id: str, payload_json: str) -> str: ...
    def next_prefix(self, id: str) -> bytes: ...


@dataclass(frozen=True, slots=True)
class SelectedCore:
    """A connection's core and how often its keep-alive timer fires (None: no timer)."""

    core: ProtocolCore
    keepalive_interval: float | None


def select(offered: Sequence[str]) -> str | None:
    """The subprotocol to answer the handshake with: the most preferred one offered, if any."""
    for name in PREFERENCE:
        if name in offered:
            return name
    return None


def core_for(
    subprotocol: str | None, *, max_operations: int, keepalive_interval: float | None
) -> SelectedCore | None:
    """A fresh core for a connection that negotiated ``subprotocol``; None if unsupported.

    graphql-transport-ws has no server keep-alive message (liveness is its client's ping and
    WebSocket pings); the legacy protocol's client expects ``ka`` every so often.
    """
    if subprotocol == protocol.SUBPROTOCOL:
        return SelectedCore(protocol.ServerProtocol(max_operations=max_operations), None)
    if subprotocol == legacy_protocol.SUBPROTOCOL:
        interval = keepalive_interval if keepalive_interval and keepalive_interval > 0 else None
        core = legacy_protocol.LegacyServerProtocol(
            max_operations=max_operations, keepalive=interval is not None
        )
        return SelectedCore(core, interval)
    return None
