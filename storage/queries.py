"""The queries the gateway and the actors need, each taking an open Session.

Nothing here commits: the caller's ``Database.write()`` block is the transaction, so that an
entity row and its event-log row are always persisted together. The shapes of what is
logged are storage/payloads.py; API tokens storage/tokens.py; the load path's batched writes
storage/group_commit.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.orm import Session

from storage.models import (
    NODE_TYPES,
    PLAN_ENTITY,
    STATUS_ENTITIES,
    DataSource,
    ExecutionEvent,
    Graph,
    PlanDagEdge,
    PlanDagNode,
    PlanMetadata,
    Project,
    utcnow,
)
from storage.payloads import rfc3339


class NotFound(LookupError):
    """A named row does not exist; the message says which."""


class InvalidInput(ValueError):
    """Input that breaks a data rule; the message names the field and what to do."""


# --- projects ---------------------------------------------------------------------------


def create_project(s: Session, name: str, description: str | None = None) -> Project:
    name = name.strip()
    if not name:
        raise InvalidInput("name must not be empty")
    if len(name) > 200:
        raise InvalidInput(f"name is {len(name)} characters long: the limit is 200")
    project = Project(name=name, description=description)
    s.add(project)
    s.flush()
    return project


def get_project(s: Session, project_id: int) -> Project | None:
    return s.get(Project, project_id)


def require_project(s: Session, project_id: int) -> Project:
    project = s.get(Project, project_id)
    if project is None:
        raise NotFound(f"project {project_id} does not exist")
    return project


def list_projects(s: Session) -> Sequence[Project]:
    return s.scalars(select(Project).order_by(Project.id)).all()


def delete_project(s: Session, project_id: int) -> bool:
    project = s.get(Project, project_id)
    if project is None:
        return False
    # Children first: not every SQLite build enforces ON DELETE CASCADE on composite keys.
    for model in (PlanDagEdge, PlanDagNode, PlanMetadata, ExecutionEvent, Graph, DataSource):
        s.execute(delete(model).where(model.project_id == project_id))
    s.delete(project)
    return True


# --- Plan DAG -----------------------------------------------------------------------------


def list_nodes(s: Session, project_id: int) -> Sequence[PlanDagNode]:
    stmt = select(PlanDagNode).where(PlanDagNode.project_id == project_id)
    return s.scalars(stmt.order_by(PlanDagNode.created_at, PlanDagNode.id)).all()


def list_edges(s: Session, project_id: int) -> Sequence[PlanDagEdge]:
    stmt = select(PlanDagEdge).where(PlanDagEdge.project_id == project_id)
    return s.scalars(stmt.order_by(PlanDagEdge.id)).all()


def get_node(s: Session, project_id: int, node_id: str) -> PlanDagNode | None:
    return s.get(PlanDagNode, (project_id, node_id))


def require_node(s: Session, project_id: int, node_id: str) -> PlanDagNode:
    node = get_node(s, project_id, node_id)
    if node is None:
        raise NotFound(f"node '{node_id}' does not exist in project {project_id}")
    return node


def _check_node_fields(node_type: str, config: Any) -> None:
    if node_type not in NODE_TYPES:
        raise InvalidInput(f"nodeType '{node_type}' is not one of {', '.join(NODE_TYPES)}")
    if not isinstance(config, dict):
        raise InvalidInput("config must be a JSON object")
    if node_type == "DataSourceNode" and "dataSourceId" in config:
        if not isinstance(config["dataSourceId"], int) or isinstance(config["dataSourceId"], bool):
            raise InvalidInput("config.dataSourceId must be an integer data source id")


def add_node(
    s: Session,
    project_id: int,
    *,
    node_type: str,
    config: dict[str, Any],
    node_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    position_x: float | None = None,
    position_y: float | None = None,
) -> PlanDagNode:
    require_project(s, project_id)
    _check_node_fields(node_type, config)
    node_id = node_id or f"{node_type.removesuffix('Node').lower()}_{uuid.uuid4().hex[:8]}"
    if get_node(s, project_id, node_id) is not None:
        raise InvalidInput(f"node id '{node_id}' is already used in project {project_id}")
    node = PlanDagNode(
        project_id=project_id,
        id=node_id,
        node_type=node_type,
        config=config,
        node_metadata=metadata,
        position_x=position_x,
        position_y=position_y,
    )
    s.add(node)
    s.flush()
    return node


def update_node(
    s: Session,
    project_id: int,
    node_id: str,
    *,
    node_type: str,
    config: dict[str, Any],
    metadata: dict[str, Any] | None = None,
    position_x: float | None = None,
    position_y: float | None = None,
) -> PlanDagNode:
    node = require_node(s, project_id, node_id)
    _check_node_fields(node_type, config)
    node.node_type = node_type
    node.config = config
    node.node_metadata = metadata
    node.position_x = position_x
    node.position_y = position_y
    node.updated_at = utcnow()
    s.flush()
    return node


def delete_node(s: Session, project_id: int, node_id: str) -> bool:
    node = get_node(s, project_id, node_id)
    if node is None:
        return False
    s.execute(
        delete(PlanDagEdge).where(
            PlanDagEdge.project_id == project_id,
            (PlanDagEdge.source == node_id) | (PlanDagEdge.target == node_id),
        )
    )
    s.execute(delete(Graph).where(Graph.project_id == project_id, Graph.node_id == node_id))
    s.delete(node)
    return True


def add_edge(
    s: Session,
    project_id: int,
    *,
    source: str,
    target: str,
    edge_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> PlanDagEdge:
    require_project(s, project_id)
    for field, node_id in (("source", source), ("target", target)):
        if get_node(s, project_id, node_id) is None:
            raise InvalidInput(f"edge {field} '{node_id}' is not a node of project {project_id}")
    if source == target:
        raise InvalidInput(f"edge from '{source}' to itself would make a cycle")
    edge_id = edge_id or f"edge_{uuid.uuid4().hex[:8]}"
    if s.get(PlanDagEdge, (project_id, edge_id)) is not None:
        raise InvalidInput(f"edge id '{edge_id}' is already used in project {project_id}")
    edge = PlanDagEdge(
        project_id=project_id, id=edge_id, source=source, target=target, edge_metadata=metadata
    )
    s.add(edge)
    s.flush()
    return edge


def delete_edge(s: Session, project_id: int, edge_id: str) -> bool:
    result = s.execute(
        delete(PlanDagEdge).where(PlanDagEdge.project_id == project_id, PlanDagEdge.id == edge_id)
    )
    return bool(result.rowcount)


def data_source_node_ids(s: Session, project_id: int, data_source_id: int) -> list[str]:
    """Every DataSourceNode of the project whose config names the data source.

    Read in Python rather than with a JSON path expression so that it is the same query on
    SQLite and PostgreSQL.
    """
    return sorted(
        node_id
        for node_id, config in s.execute(
            select(PlanDagNode.id, PlanDagNode.config).where(
                PlanDagNode.project_id == project_id,
                PlanDagNode.node_type == "DataSourceNode",
            )
        )
        if isinstance(config, dict) and config.get("dataSourceId") == data_source_id
    )


class NodeIdMap(NamedTuple):
    """A project's node-ID map: which nodes name each data source, and every node's type."""

    by_source: dict[int, list[str]]  # data source id → its DataSourceNodes' ids, sorted
    types: dict[str, str]  # node id → node type


def node_id_map(s: Session, project_id: int) -> NodeIdMap:
    """The whole node-ID map of a project, as the plan is now: for a one-off resolution
    of rows that were logged without theirs (storage/migrate.py), never for history."""
    by_source: dict[int, list[str]] = {}
    types: dict[str, str] = {}
    for node_id, node_type, config in s.execute(
        select(PlanDagNode.id, PlanDagNode.node_type, PlanDagNode.config).where(
            PlanDagNode.project_id == project_id
        )
    ):
        types[node_id] = node_type
        if node_type == "DataSourceNode" and isinstance(config, dict):
            source_id = config.get("dataSourceId")
            if isinstance(source_id, int):
                by_source.setdefault(source_id, []).append(node_id)
    for ids in by_source.values():
        ids.sort()
    return NodeIdMap(by_source, types)


def resolve_nodes(
    s: Session, project_id: int, entity: str, entity_id: int, node_id: str | None
) -> list[list[str]]:
    """The Plan DAG nodes a state change concerns now, as [node id, node type] pairs.

    A data source: every DataSourceNode naming it (sorted). A graph: its node, unless that
    node has been deleted (then nobody can show its badge: no node).
    """
    if entity == "datasource":
        return [[n, "DataSourceNode"] for n in data_source_node_ids(s, project_id, entity_id)]
    if node_id is None:
        return []
    node_type = s.scalar(
        select(PlanDagNode.node_type).where(
            PlanDagNode.project_id == project_id, PlanDagNode.id == node_id
        )
    )
    return [[node_id, node_type]] if node_type is not None else []


PLAN_NAME_LIMIT = 200


def plan_metadata(s: Session, project: Project) -> dict[str, Any]:
    """The plan's metadata in the PlanMetadata shape (the planDag query's `metadata`).

    Before its first edit a plan is named and described like its project, version "1",
    created and last modified when the project was made, by no one in particular.
    """
    row = s.get(PlanMetadata, project.id)
    created = rfc3339(project.created_at)
    if row is None:
        return {
            "version": "1",
            "name": project.name,
            "description": project.description,
            "created": created,
            "lastModified": created,
            "author": None,
        }
    return {
        "version": str(row.revision),
        "name": row.name,
        "description": row.description,
        "created": created,
        "lastModified": rfc3339(row.updated_at),
        "author": row.author,
    }


def update_plan_metadata(
    s: Session, project: Project, name: str, description: str | None, author: str | None
) -> dict[str, Any]:
    """Set the plan's name and description; returns the new metadata (see plan_metadata)."""
    name = name.strip()
    if not name:
        raise InvalidInput(
            "metadata.name must not be empty: give the plan a name (a description alone "
            "is not enough)"
        )
    if len(name) > PLAN_NAME_LIMIT:
        raise InvalidInput(
            f"metadata.name is {len(name)} characters long; the limit is {PLAN_NAME_LIMIT}"
        )
    row = s.get(PlanMetadata, project.id)
    if row is None:
        row = PlanMetadata(project_id=project.id, revision=1)
        s.add(row)
    row.name = name
    row.description = description
    row.revision = (row.revision or 1) + 1
    row.author = author
    row.updated_at = utcnow()
    s.flush()
    return plan_metadata(s, project)


def edges_of_node(s: Session, project_id: int, node_id: str) -> Sequence[PlanDagEdge]:
    """The edges into and out of a node (removed with it)."""
    return s.scalars(
        select(PlanDagEdge)
        .where(
            PlanDagEdge.project_id == project_id,
            (PlanDagEdge.source == node_id) | (PlanDagEdge.target == node_id),
        )
        .order_by(PlanDagEdge.id)
    ).all()


# --- data sources -------------------------------------------------------------------------


class CreatedDataSource(NamedTuple):
    source: DataSource
    node: PlanDagNode | None  # its DataSourceNode, unless asked for none


def create_data_source(
    s: Session,
    project_id: int,
    *,
    name: str,
    filename: str,
    file_format: str,
    data_type: str,
    content: str,
    add_node_for_it: bool = True,
) -> CreatedDataSource:
    """Store a file and (as the frontend expects) a DataSourceNode naming it."""
    require_project(s, project_id)
    if not name.strip():
        raise InvalidInput("name must not be empty")
    if not filename.strip():
        raise InvalidInput("filename must not be empty")
    source = DataSource(
        project_id=project_id,
        name=name.strip(),
        filename=filename.strip(),
        file_format=file_format,
        data_type=data_type,
        content=content,
        status="processing",
        execution_state="not_started",
    )
    s.add(source)
    s.flush()
    node = None
    if add_node_for_it:
        node = add_node(
            s,
            project_id,
            node_type="DataSourceNode",
            node_id=f"datasource_{source.id}",
            config={"dataSourceId": source.id, "filename": filename, "dataType": data_type},
            metadata={"label": name},
        )
    return CreatedDataSource(source, node)


def require_data_source(s: Session, data_source_id: int) -> DataSource:
    source = s.get(DataSource, data_source_id)
    if source is None:
        raise NotFound(f"data source {data_source_id} does not exist")
    return source


def list_data_sources(s: Session, project_id: int) -> Sequence[DataSource]:
    stmt = select(DataSource).where(DataSource.project_id == project_id)
    return s.scalars(stmt.order_by(DataSource.id)).all()


# --- graphs -------------------------------------------------------------------------------


def get_or_create_graph(s: Session, project_id: int, node_id: str) -> Graph:
    graph = s.scalar(select(Graph).where(Graph.project_id == project_id, Graph.node_id == node_id))
    if graph is None:
        graph = Graph(project_id=project_id, node_id=node_id, execution_state="not_started")
        s.add(graph)
        s.flush()
    return graph


def get_graph_by_node(s: Session, project_id: int, node_id: str) -> Graph | None:
    return s.scalar(select(Graph).where(Graph.project_id == project_id, Graph.node_id == node_id))


def list_graphs(s: Session, project_id: int) -> Sequence[Graph]:
    return s.scalars(select(Graph).where(Graph.project_id == project_id).order_by(Graph.id)).all()


# --- the event log ------------------------------------------------------------------------


def next_sequence(s: Session, project_id: int) -> int:
    """Take the project's next sequence number inside the caller's transaction.

    The UPDATE takes the project row's lock (PostgreSQL) or the database's write lock
    (SQLite, BEGIN IMMEDIATE) until commit, so concurrent writers in any number of
    processes get strictly increasing numbers with no gap.
    """
    sequence = s.scalar(
        update(Project)
        .where(Project.id == project_id)
        .values(last_sequence=Project.last_sequence + 1)
        .returning(Project.last_sequence)
    )
    if sequence is None:
        raise NotFound(f"project {project_id} does not exist")
    return sequence


def record_event(
    s: Session,
    project_id: int,
    *,
    entity: str,
    entity_id: int,
    node_id: str | None,
    payload: dict[str, Any],
    now: datetime | None = None,
) -> ExecutionEvent:
    """Log one change with the project's next sequence; a state change with its nodes.

    The nodes are resolved after the sequence is taken: from then on this transaction holds
    the project row's lock (SQLite: the write lock), so every plan edit with a smaller
    sequence has committed (and PostgreSQL's next statement sees it) and none with a larger
    one has. The resolution is the plan as of this very sequence, in every process.
    """
    sequence = next_sequence(s, project_id)
    nodes = (
        None if entity == PLAN_ENTITY else resolve_nodes(s, project_id, entity, entity_id, node_id)
    )
    row = ExecutionEvent(
        project_id=project_id,
        sequence=sequence,
        entity=entity,
        entity_id=entity_id,
        node_id=node_id,
        payload=payload,
        nodes=nodes,
        created_at=now or utcnow(),
    )
    s.add(row)
    s.flush()
    return row


def last_sequence(s: Session, project_id: int) -> int:
    return s.scalar(select(Project.last_sequence).where(Project.id == project_id)) or 0


def events_after(
    s: Session,
    project_id: int,
    after: int,
    limit: int | None = None,
    upto: int | None = None,
    *,
    status_only: bool = False,
) -> Sequence[ExecutionEvent]:
    """Logged changes after `after` (up to `upto`), in sequence order, one query.

    `status_only` leaves out plan edits (so that `limit` counts state changes, and a page
    of a status stream is never empty while more follow).
    """
    stmt = select(ExecutionEvent).where(
        ExecutionEvent.project_id == project_id, ExecutionEvent.sequence > after
    )
    if upto is not None:
        stmt = stmt.where(ExecutionEvent.sequence <= upto)
    if status_only:
        stmt = stmt.where(ExecutionEvent.entity.in_(STATUS_ENTITIES))
    stmt = stmt.order_by(ExecutionEvent.sequence)
    if limit is not None:
        stmt = stmt.limit(limit)
    return s.scalars(stmt).all()


class EntityIds(NamedTuple):
    data_sources: set[int]  # the project's data source ids
    graphs: dict[str, int]  # node id → its graph row's id


def entity_ids(s: Session, project_id: int) -> EntityIds:
    """The project's data source ids, and its graphs' ids by node: ids only (no file
    content, no graph JSON), for a snapshot that takes states from the log."""
    sources = set(s.scalars(select(DataSource.id).where(DataSource.project_id == project_id)))
    graphs = dict(
        s.execute(select(Graph.node_id, Graph.id).where(Graph.project_id == project_id)).all()
    )
    return EntityIds(sources, graphs)


def latest_status_events(
    s: Session, project_id: int, upto: int
) -> dict[tuple[str, int], ExecutionEvent]:
    """Each entity's latest logged state change up to `upto`: (entity, entity id) → row.

    One query (a GROUP BY joined back to the rows). The snapshot's source: since a change's
    nodes are every node naming the entity at that sequence, the latest change of an entity
    names every node that names it still.
    """
    latest = (
        select(func.max(ExecutionEvent.sequence).label("sequence"))
        .where(
            ExecutionEvent.project_id == project_id,
            ExecutionEvent.entity.in_(STATUS_ENTITIES),
            ExecutionEvent.sequence <= upto,
        )
        .group_by(ExecutionEvent.entity, ExecutionEvent.entity_id)
        .subquery()
    )
    rows = s.scalars(
        select(ExecutionEvent).join(
            latest,
            and_(
                ExecutionEvent.project_id == project_id,
                ExecutionEvent.sequence == latest.c.sequence,
            ),
        )
    ).all()
    return {(row.entity, row.entity_id): row for row in rows}


def oldest_retained_sequence(s: Session, project_id: int) -> int | None:
    return s.scalar(
        select(func.min(ExecutionEvent.sequence)).where(ExecutionEvent.project_id == project_id)
    )


def prune_events(s: Session, project_id: int, keep: int) -> int:
    """Apply the retention limit: keep the newest `keep` events of the project."""
    newest = last_sequence(s, project_id)
    result = s.execute(
        delete(ExecutionEvent).where(
            ExecutionEvent.project_id == project_id, ExecutionEvent.sequence <= newest - keep
        )
    )
    return result.rowcount or 0
