"""Persisting execution-state changes: the entity row and its event-log row, one transaction.

Every executor goes through here, so the rule "persist first, publish after commit" lives in
one place: each method commits, then returns the StatusChanged the caller publishes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from actors.messages import LoggedChange, PlanChanged, StatusChanged
from storage import group_commit, payloads, queries
from storage.db import Database
from storage.models import PLAN_ENTITY, DataSource, ExecutionEvent, Graph, PlanDagNode, utcnow
from storage.retry import DEFAULT_DEADLINE, retrying

log = logging.getLogger(__name__)

DEFAULT_RETENTION = 10_000
PRUNE_EVERY = 100
INTERRUPTED = "interrupted by a restart: run the node again"


def status_from_row(row: ExecutionEvent) -> StatusChanged:
    """A state-change row as the message that was (or would have been) published for it."""
    return StatusChanged(
        project_id=row.project_id,
        sequence=row.sequence,
        entity=row.entity,
        entity_id=row.entity_id,
        node_id=row.node_id,
        state=row.payload,
        timestamp=payloads.rfc3339(row.created_at) or "",
        nodes=tuple((node_id, node_type) for node_id, node_type in row.nodes or ()),
    )


def message_from_row(row: ExecutionEvent) -> LoggedChange:
    """Any event-log row as its message: a state change, or a plan edit."""
    if row.entity == PLAN_ENTITY:
        return PlanChanged(
            project_id=row.project_id,
            sequence=row.sequence,
            change=row.payload,
            timestamp=payloads.rfc3339(row.created_at) or "",
        )
    return status_from_row(row)


def set_source_state(
    row: DataSource,
    state: str,
    *,
    error: str | None = None,
    graph_json: dict[str, Any] | None = None,
) -> None:
    """A data source's execution state and what goes with it (status, processedAt, graph):
    the one place these rules live, for the upload path and plan runs alike."""
    row.execution_state = state
    row.error_message = error
    if state == "processing":
        row.status = "processing"
    elif state == "completed":
        row.status = "active"
        row.processed_at = utcnow()
        if graph_json is not None:
            row.graph_json = graph_json
    elif state == "error":
        row.status = "error"


class Superseded(Exception):
    """Raised by a change function: the row moved on (a stop reset it), write nothing."""


class StateStore:
    """Writes state changes; `retention` is how many events per project the log keeps."""

    def __init__(
        self,
        db: Database,
        retention: int = DEFAULT_RETENTION,
        *,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        if retention < 1:
            raise ValueError(f"retention must be at least 1 event, got {retention}")
        self.db = db
        self.retention = retention
        self.deadline = deadline  # how long a state write retries a transient error

    # --- data sources -------------------------------------------------------------------

    def data_source(
        self, data_source_id: int, change: Callable[[DataSource], None]
    ) -> StatusChanged:
        """Apply `change` to the data source row and log its new state, atomically.

        If `change` raises Superseded, nothing is written and Superseded propagates. A
        transient database error runs the transaction again (storage/retry.py): a committed
        change must not be lost, nor a row left `processing`, for a dropped connection.
        """

        def write() -> StatusChanged:
            with self.db.write() as s:
                source = queries.require_data_source(s, data_source_id)
                change(source)
                source.updated_at = utcnow()
                s.flush()
                row = self._log(
                    s,
                    source.project_id,
                    "datasource",
                    source.id,
                    None,
                    payloads.data_source_payload(source),
                )
                return status_from_row(row)

        return retrying(
            write, what=f"writing data source {data_source_id}'s state", deadline=self.deadline
        )

    def data_source_processing(self, data_source_id: int) -> StatusChanged:
        return self.data_source(data_source_id, lambda r: set_source_state(r, "processing"))

    def data_source_pending(self, data_source_id: int) -> StatusChanged:
        return self.data_source(data_source_id, lambda r: set_source_state(r, "pending"))

    def data_source_completed(
        self, data_source_id: int, graph_json: dict[str, Any]
    ) -> StatusChanged:
        return self.data_source(
            data_source_id, lambda r: set_source_state(r, "completed", graph_json=graph_json)
        )

    def data_source_failed(self, data_source_id: int, error: str) -> StatusChanged:
        return self.data_source(data_source_id, lambda r: set_source_state(r, "error", error=error))

    def data_source_states(
        self, changes: Sequence[group_commit.SourceStateChange], now: datetime
    ) -> list[StatusChanged]:
        """Log many data sources' new states in one transaction (group commit).

        The same rules as `data_source`: each change (in order) gets its project's next
        sequence, is resolved to the nodes naming its source as of that sequence, the log
        is pruned every PRUNE_EVERY events; the messages to publish after commit are
        returned in order. The load
        generator writes through here, so a load test measures this store, not a copy.
        Each data source's resolution is carried as one shared tuple per batch.
        """
        stamp = payloads.rfc3339(now) or ""
        with self.db.write() as s:
            recorded = group_commit.record_data_source_states(s, changes, now)
            # Pruned as `_log` does (when a sequence reaches a multiple of PRUNE_EVERY), all
            # in one statement, each project as of its newest sequence in the batch.
            newest = {project_id: sequence for project_id, sequence, *_ in recorded}
            due = {
                project_id: newest[project_id]
                for project_id, sequence, *_ in recorded
                if sequence % PRUNE_EVERY == 0 or self.retention < PRUNE_EVERY
            }
            group_commit.prune_events_upto(s, due, self.retention)
        carried_of: dict[int, tuple[tuple[str, str], ...]] = {}
        messages = []
        for project_id, sequence, source_id, payload, nodes in recorded:
            carried = carried_of.get(source_id)
            if carried is None:
                carried = carried_of[source_id] = tuple((n, kind) for n, kind in nodes)
            messages.append(
                StatusChanged(
                    project_id, sequence, "datasource", source_id, None, payload, stamp, carried
                )
            )
        return messages

    # --- graphs -------------------------------------------------------------------------

    def graph(
        self, project_id: int, node_id: str, change: Callable[[Graph], None]
    ) -> StatusChanged:
        """The graph row of a graph-like node (created on first use), as `data_source`."""

        def write() -> StatusChanged:
            with self.db.write() as s:
                graph = queries.get_or_create_graph(s, project_id, node_id)
                change(graph)
                graph.updated_at = utcnow()
                s.flush()
                row = self._log(
                    s, project_id, "graph", graph.id, node_id, payloads.graph_payload(graph)
                )
                return status_from_row(row)

        return retrying(
            write,
            what=f"writing node '{node_id}' of project {project_id}'s state",
            deadline=self.deadline,
        )

    # --- plan edits ---------------------------------------------------------------------

    def plan_edit(
        self,
        s: Session,
        project_id: int,
        change: dict[str, Any],
        *,
        names_source_of: PlanDagNode | None = None,
    ) -> list[LoggedChange]:
        """Log a plan edit in the caller's transaction, the one that made it.

        `names_source_of` is a node the edit made (or may have made) name a data source:
        that source's current state is logged again right after the edit, naming every node
        that names it now. The new node gets its badge, live and in the log, and the latest
        logged change of every data source names all of its nodes (the snapshot relies on
        it). Returns the messages to publish after commit, in sequence order.
        """
        node_id = change["node"]["id"] if change["type"] == "node" else None
        logged = [self._log(s, project_id, PLAN_ENTITY, 0, node_id, change)]
        source_id = named_source(names_source_of)
        if source_id is not None:
            source = s.get(DataSource, source_id)
            if source is not None and source.project_id == project_id:
                payload = payloads.data_source_payload(source)
                logged.append(self._log(s, project_id, "datasource", source.id, None, payload))
        return [message_from_row(row) for row in logged]

    # --- the log ------------------------------------------------------------------------

    def _log(
        self,
        s: Session,
        project_id: int,
        entity: str,
        entity_id: int,
        node_id: str | None,
        payload: dict[str, Any],
        now: datetime | None = None,
    ) -> ExecutionEvent:
        row = queries.record_event(
            s,
            project_id,
            entity=entity,
            entity_id=entity_id,
            node_id=node_id,
            payload=payload,
            now=now,
        )
        if row.sequence % PRUNE_EVERY == 0 or self.retention < PRUNE_EVERY:
            queries.prune_events(s, project_id, self.retention)
        return row

    def recover_interrupted(self) -> list[StatusChanged]:
        """Everything a crash left in `processing` (or `pending`) becomes `error`."""
        return retrying(self._recover_interrupted, what="recovering interrupted executions")

    def _recover_interrupted(self) -> list[StatusChanged]:
        with self.db.read() as s:
            # status "processing" with execution_state "not_started": queued, never started
            sources = s.scalars(
                select(DataSource.id).where(
                    DataSource.execution_state.in_(("processing", "pending"))
                    | (DataSource.status == "processing")
                )
            ).all()
            graphs = s.execute(
                select(Graph.project_id, Graph.node_id).where(
                    Graph.execution_state.in_(("processing", "pending"))
                )
            ).all()
        changes = [self.data_source_failed(source_id, INTERRUPTED) for source_id in sources]

        def interrupted(graph: Graph) -> None:
            graph.execution_state = "error"
            graph.error_message = INTERRUPTED

        changes += [self.graph(pid, node_id, interrupted) for pid, node_id in graphs]
        if changes:
            log.warning("marked %d interrupted executions as error", len(changes))
        return changes


def named_source(node: PlanDagNode | None) -> int | None:
    """The data source a DataSourceNode's config names, if any."""
    if node is None or node.node_type != "DataSourceNode" or not isinstance(node.config, dict):
        return None
    source_id = node.config.get("dataSourceId")
    return source_id if isinstance(source_id, int) and not isinstance(source_id, bool) else None
