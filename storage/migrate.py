"""Bringing a database made by an earlier version up to the current models, at start.

`create_all` makes missing tables but never alters an existing one. The one change so far:
`execution_events.nodes`, the Plan DAG nodes each state change concerns, stored with the
event (before, they were worked out again with the current plan at every read). Rows
logged before it have no stored resolution; they get the one the earlier version would
have shown last, the plan as it is at the upgrade, once, and from then on it is fixed.

Every step is idempotent (`IF NOT EXISTS`, `WHERE nodes IS NULL`), so two processes
starting together on PostgreSQL cannot break each other (the schema creation around it
serialises them too).
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine, inspect, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from storage.models import ExecutionEvent, Project
from storage.queries import node_id_map

log = logging.getLogger(__name__)


class SchemaUpgradeError(RuntimeError):
    """The database is older than this version and could not be brought up to it."""


def upgrade(engine: Engine) -> None:
    """Add what an older schema lacks; a no-op on a current one."""
    columns = {c["name"] for c in inspect(engine).get_columns(ExecutionEvent.__tablename__)}
    if "nodes" in columns:
        return
    log.warning("upgrading the event log: adding execution_events.nodes (one time)")
    column_type = "JSONB" if engine.dialect.name == "postgresql" else "JSON"
    exists = " IF NOT EXISTS" if engine.dialect.name == "postgresql" else ""
    statement = f"ALTER TABLE execution_events ADD COLUMN{exists} nodes {column_type}"
    try:
        with engine.begin() as conn:
            conn.execute(text(statement))
        with Session(engine) as s, s.begin():
            _resolve_old_rows(s)
    except SQLAlchemyError as error:
        reason = str(getattr(error, "orig", error)).strip().splitlines()[0]
        raise SchemaUpgradeError(
            f"this database was made by an earlier planpulse and its table execution_events "
            f"lacks the column nodes; adding it failed ({reason}): start planpulse once as "
            f"a database user allowed to alter the table (its owner), or run "
            f"`{statement}` yourself"
        ) from error


def _resolve_old_rows(s: Session) -> None:
    """One UPDATE per data source and one per graph node of each project with old rows."""
    events = ExecutionEvent
    pending = select(events.project_id).where(events.nodes.is_(None)).distinct()
    project_ids = s.scalars(select(Project.id).where(Project.id.in_(pending))).all()
    for project_id in project_ids:
        by_source, types = node_id_map(s, project_id)
        old = (events.project_id == project_id) & events.nodes.is_(None)
        for source_id, node_ids in by_source.items():
            s.execute(
                update(events)
                .where(old, events.entity == "datasource", events.entity_id == source_id)
                .values(nodes=[[node_id, "DataSourceNode"] for node_id in node_ids])
            )
        for node_id, node_type in types.items():
            s.execute(
                update(events)
                .where(old, events.entity == "graph", events.node_id == node_id)
                .values(nodes=[[node_id, node_type]])
            )
        # Whatever is left names no node that exists (a deleted one): no node events.
        s.execute(update(events).where(old).values(nodes=[]))
