"""The ProjectActor: one per project with subscribers or traffic.

It owns the project's subscribers and the node-ID cache, and it is the only place where a
state change becomes NodeExecutionStatusEvents. It runs on the shared actor threads
(actors/runtime.py), not on a thread of its own: a process may watch thousands of projects.
Because it handles one message at a time, ordering is simple: it delivers sequences in
increasing order, drops duplicates, and fills any gap (a message still in flight from
another executor, a lost pub/sub message) from the event log before delivering what
follows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

from actors.events import node_events
from actors.messages import (
    IdleCheck,
    PlanChanged,
    Resync,
    Selection,
    StatusChanged,
    Subscribe,
    Subscriber,
    Unsubscribe,
)
from actors.runtime import ShardedActor
from actors.state import status_from_row
from storage import queries
from storage.db import Database

log = logging.getLogger(__name__)

REPLAY_PAGE = 1000


class _Group:
    """Subscribers sharing one selection: one render per event for all of them."""

    __slots__ = ("selection", "subscribers")

    def __init__(self, selection: Selection) -> None:
        self.selection = selection
        self.subscribers: dict[Hashable, Subscriber] = {}


class ProjectActor(ShardedActor):
    """Turns a project's state changes into frames for its subscribers' mailboxes."""

    def __init__(
        self,
        project_id: int,
        db: Database,
        on_delivered: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        # Told each delivered change's timestamp, once per change (the latency metric).
        self.on_delivered = on_delivered
        self.project_id = project_id
        self.db = db
        self.groups: dict[Hashable, _Group] = {}
        self.subscriber_groups: dict[Hashable, Hashable] = {}
        # node-ID cache: data source id -> DataSourceNode ids naming it; node id -> node type.
        # Loaded whole, in one query, when a subscriber arrives and after each PlanChanged,
        # so that no event waits for a database read (a shared actor thread would wait too).
        self.source_nodes: dict[int, tuple[str, ...]] = {}
        self.node_types: dict[str, str] = {}
        self.routes_loaded = False
        self.route_loads = 0
        self.cache_hits = 0
        self.cache_misses = 0
        self.last_activity = time.monotonic()
        # Read here, in the thread that starts the actor (the hub's, while it routes the
        # first Subscribe), not in on_start: a change committed between the subscribe and
        # the actor's first step must count as new and be delivered.
        with self.db.read() as s:
            self.last_sequence = queries.last_sequence(s, self.project_id)

    # --- dispatch ---------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, IdleCheck):  # being asked is not traffic
            self.last_activity = time.monotonic()
        if isinstance(message, StatusChanged):
            self._on_status(message)
        elif isinstance(message, Subscribe):
            self._on_subscribe(message)
        elif isinstance(message, Unsubscribe):
            self._remove(message.key)
        elif isinstance(message, PlanChanged):
            self.source_nodes.clear()
            self.node_types.clear()
            self.routes_loaded = False
        elif isinstance(message, Resync):
            self._resync()
        elif isinstance(message, IdleCheck):
            return self._is_idle(message.idle_seconds)
        elif message == "stats":
            return self.stats()
        else:
            log.warning("project %s: unknown message %r", self.project_id, message)
        return None

    def stats(self) -> dict[str, int]:
        return {
            "subscribers": len(self.subscriber_groups),
            "groups": len(self.groups),
            "last_sequence": self.last_sequence,
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "route_loads": self.route_loads,
        }

    def _is_idle(self, idle_seconds: float) -> bool:
        return not self.subscriber_groups and time.monotonic() - self.last_activity >= idle_seconds

    # --- state changes ----------------------------------------------------------------

    def _on_status(self, message: StatusChanged) -> None:
        if message.sequence <= self.last_sequence:
            return  # already delivered (a duplicate, or older than this actor's start)
        if not self.groups:
            self.last_sequence = message.sequence
            return
        if message.sequence > self.last_sequence + 1:
            self._fill_gap(upto=message.sequence - 1)
        self._publish(message)

    def _resync(self) -> None:
        with self.db.read() as s:
            committed = queries.last_sequence(s, self.project_id)
        if committed > self.last_sequence:
            self._fill_gap(upto=committed)

    def _fill_gap(self, upto: int) -> None:
        with self.db.read() as s:
            rows = queries.events_after(s, self.project_id, self.last_sequence, upto=upto)
            missing = [status_from_row(row) for row in rows]
        for message in missing:
            self._publish(message)
        self.last_sequence = max(self.last_sequence, upto)

    def _publish(self, message: StatusChanged) -> None:
        events = self.events_for(message)
        self.last_sequence = message.sequence
        if not events:
            return
        for group in list(self.groups.values()):
            items = [
                (event["nodeId"], event["sequence"], group.selection.render(event))
                for event in events
            ]
            for subscriber in list(group.subscribers.values()):
                subscriber.deliver(items)
        if self.on_delivered is not None:
            self.on_delivered(message.timestamp)

    def events_for(self, message: StatusChanged) -> list[dict[str, Any]]:
        return node_events(message, self._nodes_of_source, self._node_type)

    def _nodes_of_source(self, data_source_id: int) -> tuple[str, ...]:
        self._ensure_routes()
        return self.source_nodes.get(data_source_id, ())

    def _node_type(self, node_id: str) -> str | None:
        self._ensure_routes()
        return self.node_types.get(node_id)

    def _ensure_routes(self) -> None:
        """A cache hit, or one read of the whole map (after PlanChanged)."""
        if self.routes_loaded:
            self.cache_hits += 1
            return
        self.cache_misses += 1
        with self.db.read() as s:
            self._load_routes(s)

    def _load_routes(self, s: Any) -> None:
        """The project's whole node-ID map, in one query."""
        by_source, types = queries.node_routes(s, self.project_id)
        self.source_nodes = {source: tuple(ids) for source, ids in by_source.items()}
        self.node_types = types
        self.routes_loaded = True
        self.route_loads += 1

    # --- subscribers ------------------------------------------------------------------

    def _on_subscribe(self, message: Subscribe) -> None:
        subscriber = message.subscriber
        try:
            replay = self._catch_up(message)
        except _Refused as refused:
            subscriber.fail([refused.error])
            return
        for items in replay:
            subscriber.deliver(items, replay=True)
        group = self.groups.get(subscriber.selection.key)
        if group is None:
            group = self.groups[subscriber.selection.key] = _Group(subscriber.selection)
        group.subscribers[subscriber.key] = subscriber
        self.subscriber_groups[subscriber.key] = subscriber.selection.key

    def _catch_up(self, message: Subscribe) -> Iterable[Sequence[tuple[str, int, bytes]]]:
        """What a new subscriber must get before live events: snapshot and/or replay."""
        selection = message.subscriber.selection
        after = message.after_sequence
        with self.db.read() as s:
            if queries.get_project(s, self.project_id) is None:
                raise _Refused(
                    f"project {self.project_id} does not exist",
                    code="PROJECT_NOT_FOUND",
                )
            committed = queries.last_sequence(s, self.project_id)
            if not self.routes_loaded:
                self._load_routes(s)
            if after is not None and self.last_sequence < after <= committed:
                # The client has seen events this actor has not received yet (in flight,
                # or lost by the bus): catch everyone up from the log first.
                self._fill_gap(upto=committed)
            upto = self.last_sequence
            pages: list[list[tuple[str, int, bytes]]] = []
            if message.snapshot:
                pages.append(self._snapshot(s, selection, upto))
            if after is not None:
                self._check_resumable(s, after, upto, committed)
                cursor = after
                while cursor < upto:
                    rows = queries.events_after(s, self.project_id, cursor, REPLAY_PAGE, upto)
                    if not rows:
                        break
                    page = []
                    for row in rows:
                        for event in self.events_for(status_from_row(row)):
                            page.append(
                                (event["nodeId"], event["sequence"], selection.render(event))
                            )
                    pages.append(page)
                    cursor = rows[-1].sequence
        return pages

    def _check_resumable(self, s: Any, after: int, upto: int, committed: int) -> None:
        if after < 0:
            raise _Refused(
                f"afterSequence must be 0 or more, got {after}", code="BAD_AFTER_SEQUENCE"
            )
        if after > committed:
            raise _Refused(
                f"afterSequence {after} is ahead of project {self.project_id}'s last "
                f"sequence {committed}: resubscribe with afterSequence {committed} or "
                "snapshot: true",
                code="BAD_AFTER_SEQUENCE",
            )
        if after >= upto:
            return
        oldest = queries.oldest_retained_sequence(s, self.project_id)
        if oldest is None or oldest > after + 1:
            raise _Refused(
                f"events after sequence {after} of project {self.project_id} are no longer in "
                f"the event log (its retention limit has dropped everything before sequence "
                f"{oldest if oldest is not None else upto + 1}): resubscribe with "
                f"snapshot: true to get the current state",
                code="RESUME_TOO_OLD",
                oldest=oldest,
            )

    def _snapshot(self, s: Any, selection: Selection, as_of: int) -> list[tuple[str, int, bytes]]:
        """The current state of every node that has one, stamped with `as_of`."""
        items: list[tuple[str, int, bytes]] = []
        changes: list[StatusChanged] = []
        for source in queries.list_data_sources(s, self.project_id):
            changes.append(
                StatusChanged(
                    self.project_id,
                    as_of,
                    "datasource",
                    source.id,
                    None,
                    queries.data_source_payload(source),
                    queries.rfc3339(source.updated_at) or "",
                )
            )
        for graph in queries.list_graphs(s, self.project_id):
            changes.append(
                StatusChanged(
                    self.project_id,
                    as_of,
                    "graph",
                    graph.id,
                    graph.node_id,
                    queries.graph_payload(graph),
                    queries.rfc3339(graph.updated_at) or "",
                )
            )
        for change in changes:
            for event in self.events_for(change):
                items.append((event["nodeId"], event["sequence"], selection.render(event)))
        return items

    def _remove(self, key: Hashable) -> None:
        group_key = self.subscriber_groups.pop(key, None)
        if group_key is None:
            return
        group = self.groups[group_key]
        group.subscribers.pop(key, None)
        if not group.subscribers:
            del self.groups[group_key]


class _Refused(Exception):
    """A subscription the actor cannot serve; carries the GraphQL error to send."""

    def __init__(self, message: str, **extensions: Any) -> None:
        super().__init__(message)
        self.error = {"message": message, "extensions": extensions}
