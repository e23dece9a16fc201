"""Group commit: many data-source state changes logged in one transaction (the load path).

Dialect-specific: the statements go to the driver's `executemany` in its own placeholder
style, with parameters prepared here (see `record_data_source_states`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from storage.models import DataSource, ExecutionEvent, PlanDagNode, Project
from storage.queries import NotFound


class SourceStateChange(NamedTuple):
    """One data source's new state, to be logged (the load generator makes these)."""

    project_id: int
    data_source_id: int
    payload: dict[str, Any]  # the contract's DataSourceExecutionMetadata


class LoggedSourceState(NamedTuple):
    """A SourceStateChange as logged: its sequence, and the nodes it was resolved to."""

    project_id: int
    sequence: int
    data_source_id: int
    payload: dict[str, Any]
    nodes: list[list[str]]  # [node id, node type] pairs, as stored in the log


def record_data_source_states(
    s: Session, changes: Sequence[SourceStateChange], now: datetime
) -> list[LoggedSourceState]:
    """Persist many data-source state changes in the caller's transaction (group commit).

    `changes` in order; each gets the next sequence of its project, and is returned as
    logged, in the same order. The projects' counter rows are locked first (FOR UPDATE on
    PostgreSQL; SQLite's BEGIN IMMEDIATE already holds the write lock), then the
    DataSourceNodes of those projects are read once for the whole batch: the resolution
    every row stores, as of its sequence (no plan edit of these projects can commit while
    the locks are held).

    This is the load path, so the writes go to the driver's `executemany` with parameters
    prepared here: the payload serialised with orjson, the timestamp converted once per
    batch with the column type's own bind processor, each data source's nodes serialised
    once per batch. SQLAlchemy's per-row parameter processing was most of the cost
    (`bench/README.md`).
    """
    conn = s.connection()
    counts: dict[int, int] = {}
    for project_id, _source, _payload in changes:
        counts[project_id] = counts.get(project_id, 0) + 1
    sql = _group_commit_sql(conn.dialect)
    ids = tuple(counts)
    current = dict(conn.exec_driver_sql(sql.counters(len(ids)), ids).all())
    missing = set(counts) - set(current)
    if missing:
        raise NotFound(f"project {min(missing)} does not exist")
    nodes_of = _data_source_nodes(conn, sql, ids)
    stamp = _datetime_param(conn.dialect, now)
    conn.exec_driver_sql(
        sql.update_project,
        [(current[pid] + count, pid) for pid, count in counts.items()],
    )
    recorded = []
    rows = []
    final_state: dict[int, dict[str, Any]] = {}
    serialised: dict[int, str] = {}
    for project_id, source_id, payload in changes:
        sequence = current[project_id] = current[project_id] + 1
        nodes = nodes_of.get((project_id, source_id), [])
        nodes_json = serialised.get(source_id)
        if nodes_json is None:
            nodes_json = serialised[source_id] = orjson.dumps(nodes).decode()
        recorded.append(LoggedSourceState(project_id, sequence, source_id, payload, nodes))
        rows.append(
            (
                project_id,
                sequence,
                "datasource",
                source_id,
                None,
                orjson.dumps(payload).decode(),
                nodes_json,
                stamp,
            )
        )
        final_state[source_id] = payload
    conn.exec_driver_sql(sql.insert_event, rows)
    conn.exec_driver_sql(
        sql.update_source,
        [
            (
                payload["status"],
                payload["executionState"],
                payload["errorMessage"],
                stamp if payload["processedAt"] else None,
                stamp,
                source_id,
            )
            for source_id, payload in final_state.items()
        ],
    )
    return recorded


def _data_source_nodes(
    conn: Any, sql: _GroupCommitSql, project_ids: tuple[int, ...]
) -> dict[tuple[int, int], list[list[str]]]:
    """(project id, data source id) → its DataSourceNodes as [node id, type] pairs, sorted."""
    found: dict[tuple[int, int], list[list[str]]] = {}
    for project_id, node_id, config in conn.exec_driver_sql(
        sql.data_source_nodes(len(project_ids)), project_ids
    ):
        if isinstance(config, str | bytes):  # SQLite's JSON is text; psycopg parses JSONB
            config = orjson.loads(config)
        if isinstance(config, dict) and isinstance(config.get("dataSourceId"), int):
            key = (project_id, config["dataSourceId"])
            found.setdefault(key, []).append([node_id, "DataSourceNode"])
    for pairs in found.values():
        pairs.sort()
    return found


def prune_events_upto(s: Session, newest: dict[int, int], keep: int) -> None:
    """`queries.prune_events` for many projects in one statement, each given its newest
    sequence, which the group commit knows: project id → newest sequence."""
    if not newest:
        return
    conn = s.connection()
    conn.exec_driver_sql(
        _group_commit_sql(conn.dialect).prune,
        [(project_id, sequence - keep) for project_id, sequence in newest.items()],
    )


@dataclass(frozen=True)
class _GroupCommitSql:
    placeholder: str  # the driver's: "?" or "%s"
    locks: bool  # SELECT … FOR UPDATE (PostgreSQL; SQLite's BEGIN IMMEDIATE locks all)
    update_project: str
    insert_event: str
    update_source: str
    prune: str

    # Driver SQL, not SQLAlchemy statements: an IN list of a new length made SQLAlchemy
    # expand and re-process the statement each batch (about a third of the batch's CPU).
    def counters(self, count: int) -> str:
        """The batch's projects' sequence counters, locked, for `count` project ids."""
        lock = " FOR UPDATE" if self.locks else ""
        return (
            f"SELECT id, last_sequence FROM {Project.__tablename__} "
            f"WHERE id IN ({self._list(count)}){lock}"
        )

    def data_source_nodes(self, count: int) -> str:
        """The DataSourceNodes (project id, node id, config) of `count` projects."""
        return (
            f"SELECT project_id, id, config FROM {PlanDagNode.__tablename__} "
            f"WHERE project_id IN ({self._list(count)}) AND node_type = 'DataSourceNode'"
        )

    def _list(self, count: int) -> str:
        return ", ".join([self.placeholder] * count)


@functools.cache
def _group_commit_sql(dialect: Dialect) -> _GroupCommitSql:
    """The group commit's statements in the driver's own placeholder style ("?" or "%s")."""
    p = "?" if dialect.paramstyle in ("qmark", "numeric") else "%s"
    payload = p if dialect.name == "sqlite" else f"CAST({p} AS JSONB)"
    return _GroupCommitSql(
        placeholder=p,
        locks=dialect.name != "sqlite",
        update_project=f"UPDATE {Project.__tablename__} SET last_sequence = {p} WHERE id = {p}",
        insert_event=(
            f"INSERT INTO {ExecutionEvent.__tablename__} (project_id, sequence, entity, "
            f"entity_id, node_id, payload, nodes, created_at) VALUES ({p}, {p}, {p}, {p}, "
            f"{p}, {payload}, {payload}, {p})"
        ),
        update_source=(
            f"UPDATE {DataSource.__tablename__} SET status = {p}, execution_state = {p}, "
            f"error_message = {p}, processed_at = {p}, updated_at = {p} WHERE id = {p}"
        ),
        prune=(
            f"DELETE FROM {ExecutionEvent.__tablename__} WHERE project_id = {p} AND sequence <= {p}"
        ),
    )


def _datetime_param(dialect: Dialect, value: datetime) -> Any:
    """`value` as the DateTime columns' bind processor hands it to this driver."""
    processor = _datetime_processor(dialect)
    return processor(value) if processor is not None else value


@functools.cache
def _datetime_processor(dialect: Dialect) -> Any:
    """Made once per dialect: building the type's processor costs ~0.2 ms a batch."""
    return DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
