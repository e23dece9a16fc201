"""SQLAlchemy 2 models: the plan's data and the execution event log.

The same models run on SQLite (the embedded default) and PostgreSQL (production): only
portable column types are used, and JSON columns become JSONB on PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JSONType = JSON().with_variant(JSONB(), "postgresql")

EXECUTION_STATES = ("not_started", "pending", "processing", "completed", "error")
DATA_SOURCE_STATUSES = ("processing", "active", "error")
# The kinds of event-log rows: execution-state changes of an entity, and Plan DAG edits.
STATUS_ENTITIES = ("datasource", "graph")
PLAN_ENTITY = "plan"
NODE_TYPES = (
    "DataSourceNode",
    "GraphNode",
    "TransformNode",
    "MergeNode",
    "CopyNode",
    "OutputNode",
)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSONType, list[Any]: JSONType}


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    # The last sequence number handed out for this project's event log. Incremented with
    # an UPDATE inside the transaction that persists a state change, so the row lock (or
    # SQLite's single writer) makes sequences gap-free and strictly increasing.
    last_sequence: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class PlanDagNode(Base):
    __tablename__ = "plan_dag_nodes"

    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    node_type: Mapped[str] = mapped_column(String(40))
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    node_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    position_x: Mapped[float | None] = mapped_column(Float)
    position_y: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class PlanDagEdge(Base):
    __tablename__ = "plan_dag_edges"
    __table_args__ = (
        ForeignKeyConstraint(
            ["project_id", "source"],
            ["plan_dag_nodes.project_id", "plan_dag_nodes.id"],
            ondelete="CASCADE",
        ),
        ForeignKeyConstraint(
            ["project_id", "target"],
            ["plan_dag_nodes.project_id", "plan_dag_nodes.id"],
            ondelete="CASCADE",
        ),
    )

    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    source: Mapped[str] = mapped_column(String(200))
    target: Mapped[str] = mapped_column(String(200))
    edge_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)


class PlanMetadata(Base):
    """The plan's own metadata (name, description), once someone edited it.

    A project has one plan; until its first updatePlanDagMetadata it has no row here and
    its metadata is the project's name and description (queries.plan_metadata). A table
    of its own, so an older database gets it from create_all without altering a table.
    """

    __tablename__ = "plan_metadata"

    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    # How many times the metadata was edited, plus one ("1" before the first edit).
    revision: Mapped[int] = mapped_column(Integer, default=1)
    author: Mapped[str | None] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DataSource(Base):
    __tablename__ = "data_sources"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    filename: Mapped[str] = mapped_column(String(500))
    file_format: Mapped[str] = mapped_column(String(10))
    data_type: Mapped[str] = mapped_column(String(10))
    content: Mapped[str] = mapped_column(Text)
    graph_json: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(20), default="processing")
    execution_state: Mapped[str] = mapped_column(String(20), default="not_started")
    error_message: Mapped[str | None] = mapped_column(Text)
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class Graph(Base):
    """The result of a graph-like Plan DAG node (Graph, Merge, Transform, Copy, Output)."""

    __tablename__ = "graphs"
    __table_args__ = (UniqueConstraint("project_id", "node_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    node_id: Mapped[str] = mapped_column(String(200))
    execution_state: Mapped[str] = mapped_column(String(20), default="not_started")
    node_count: Mapped[int] = mapped_column(Integer, default=0)
    edge_count: Mapped[int] = mapped_column(Integer, default=0)
    source_hash: Mapped[str | None] = mapped_column(String(64))
    graph_json: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    computed_date: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class ExecutionEvent(Base):
    """One persisted change of a project: the source of replay (`afterSequence`), snapshots
    and the `executionEvents` query.

    Every change of a project takes the project's next sequence, whatever its kind:
    `entity` "datasource" or "graph" is an execution-state change of that entity (`payload`
    is its DataSourceExecutionMetadata or GraphExecutionMetadata); "plan" is a Plan DAG edit
    (`payload` says which node or edge, and how).

    `nodes` is the resolution of a state change: the Plan DAG nodes it concerns, as
    [node id, node type] pairs, read from the plan inside the transaction that took the
    sequence, so it is the plan as of that sequence. It is stored, never re-derived: live
    delivery, replay, snapshots and the query all read it, and a later plan edit cannot
    rewrite history. `node_id` is the graph's node for graphs (fixed), None otherwise.
    """

    __tablename__ = "execution_events"

    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    sequence: Mapped[int] = mapped_column(Integer, primary_key=True)
    entity: Mapped[str] = mapped_column(String(20))  # "datasource" | "graph" | "plan"
    entity_id: Mapped[int] = mapped_column(Integer)
    node_id: Mapped[str | None] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    nodes: Mapped[list[Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_execution_events_entity", "project_id", "entity", "entity_id"),)


class ApiToken(Base):
    """A bearer token, stored as its SHA-256 only, scoped to projects (or admin)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    project_ids: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
