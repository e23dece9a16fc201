"""The messages actors exchange, and the two interfaces the gateway implements for them.

Messages are frozen dataclasses: they cross threads (and, for StatusChanged and PlanChanged,
processes through the bus), so nobody may mutate one after sending it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

# --- what executors publish ---------------------------------------------------------------


NodeRef = tuple[str, str]  # (Plan DAG node id, node type)


@dataclass(frozen=True, slots=True)
class StatusChanged:
    """An entity's execution state changed; persisted (with `sequence`) before it was sent.

    `entity` is "datasource" or "graph"; `state` is the contract's DataSourceExecutionMetadata
    or GraphExecutionMetadata. `nodes` are the Plan DAG nodes it concerns, resolved in the
    transaction that took the sequence and stored with the event (a data source may be
    named by several nodes): whoever receives it, in any process, delivers to exactly
    those, with no node-ID map of its own that could be stale. `node_id` is set for graphs.
    """

    project_id: int
    sequence: int
    entity: str
    entity_id: int
    node_id: str | None
    state: dict[str, Any]
    timestamp: str
    nodes: tuple[NodeRef, ...] = ()

    def to_json(self) -> bytes:
        return orjson.dumps({"kind": "status", **_fields(self)})


@dataclass(frozen=True, slots=True)
class PlanChanged:
    """The Plan DAG of a project was edited; persisted with its `sequence` before it was sent.

    A plan edit takes a sequence of the project like a state change, in the same
    transaction as the edit, so every process sees edits and state changes in the log's
    one order. `change` is {"type": "node" | "edge" | "metadata", "operation": "added" |
    "updated" | "removed" | "moved", "node" | "edge" | "metadata": ...}. Status
    subscribers get no event for it: to them its sequence is one that names no node (the
    actor knows it, so it is not a gap to fill).
    """

    project_id: int
    sequence: int
    change: dict[str, Any]
    timestamp: str

    def to_json(self) -> bytes:
        return orjson.dumps({"kind": "plan", **_fields(self)})


BusMessage = StatusChanged | PlanChanged
LoggedChange = StatusChanged | PlanChanged  # whatever an event-log row says


def bus_message_from_json(data: bytes | str) -> BusMessage:
    raw = orjson.loads(data)
    kind = raw.pop("kind")
    if kind == "status":
        raw["nodes"] = tuple((node_id, node_type) for node_id, node_type in raw.get("nodes", ()))
        return StatusChanged(**raw)
    if kind == "plan":
        return PlanChanged(**raw)
    raise ValueError(f"unknown bus message kind {kind!r}")


def _fields(message: StatusChanged | PlanChanged) -> dict[str, Any]:
    return {name: getattr(message, name) for name in message.__slots__}


# --- what the gateway hands to project actors ---------------------------------------------


class Selection(Protocol):
    """One distinct subscription document with its variables.

    Subscribers whose selections have the same `key` share one execution and one
    serialisation per event: `render` is called once per event per distinct key.
    """

    key: Hashable

    def render(self, event: dict[str, Any]) -> bytes:
        """The `next` payload (`{"data": ...}`) for one NodeExecutionStatusEvent, as JSON."""
        ...


class Subscriber(Protocol):
    """A subscription's mailbox, as the project actor sees it (implemented by the gateway)."""

    key: Hashable
    selection: Selection

    def deliver(self, items: Sequence[tuple[str, int, bytes]], *, replay: bool = False) -> None:
        """Take rendered events (node id, sequence, payload); never blocks.

        Live items go through the bounded mailbox (coalescing, then closing a subscriber
        that cannot keep up); replayed items are the answer to a resume and are not
        coalesced.
        """
        ...

    def fail(self, errors: list[dict[str, Any]]) -> None:
        """End the subscription with GraphQL errors (the project does not exist, ...)."""
        ...

    # Optional: `when_written(callback)`, call `callback` (from any thread, never blocking)
    # once everything delivered so far has been handed to the socket. A resume's replay
    # reads its next page only then (actors/project.py); without it, at once.


@dataclass(frozen=True, slots=True)
class ReplayMore:
    """The socket of a resuming subscriber took its replay so far: the next page."""

    key: Hashable


@dataclass(frozen=True, slots=True)
class Subscribe:
    subscriber: Subscriber
    after_sequence: int | None = None
    snapshot: bool = False


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    key: Hashable


@dataclass(frozen=True, slots=True)
class Resync:
    """Messages may have been lost (a bus reconnect): catch up from the event log."""


@dataclass(frozen=True, slots=True)
class IdleCheck:
    """Asked by the hub: 'have you had no subscriber and no traffic for this long?'"""

    idle_seconds: float
