"""The payload shapes of the event log and the contract, from storage rows (pure).

A state change's payload (`data_source_payload`, `graph_payload`) is stored in the event
log as the contract's execution metadata; a plan edit's (`node_change`, `edge_change`,
`metadata_change`) as the planDagChanged event carries it. Timestamps are `rfc3339`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from storage.models import DataSource, Graph, PlanDagEdge, PlanDagNode


def rfc3339(value: datetime | None) -> str | None:
    """UTC, RFC 3339, millisecond precision: what the frontend parses."""
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite returns naive datetimes; they were stored as UTC
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def plan_node_payload(node: PlanDagNode) -> dict[str, Any]:
    """A Plan DAG node as a plan-edit event carries it."""
    return {
        "id": node.id,
        "nodeType": node.node_type,
        "config": node.config,
        "metadata": node.node_metadata,
        "positionX": node.position_x,
        "positionY": node.position_y,
    }


def plan_edge_payload(edge: PlanDagEdge) -> dict[str, Any]:
    """A Plan DAG edge as a plan-edit event carries it."""
    return {
        "id": edge.id,
        "source": edge.source,
        "target": edge.target,
        "metadata": edge.edge_metadata,
    }


def node_change(operation: str, node: PlanDagNode) -> dict[str, Any]:
    """The payload of a plan-edit event on a node: operation "added", "updated", "removed"."""
    return {"type": "node", "operation": operation, "node": plan_node_payload(node)}


def edge_change(operation: str, edge: PlanDagEdge) -> dict[str, Any]:
    """The payload of a plan-edit event on an edge: operation "added" or "removed"."""
    return {"type": "edge", "operation": operation, "edge": plan_edge_payload(edge)}


def metadata_change(metadata: dict[str, Any]) -> dict[str, Any]:
    """The payload of a plan-edit event on the plan's metadata."""
    return {"type": "metadata", "operation": "updated", "metadata": metadata}


def data_source_payload(source: DataSource) -> dict[str, Any]:
    """The `DataSourceExecutionMetadata` of the contract, as stored in the event log."""
    return {
        "dataSourceId": source.id,
        "filename": source.filename,
        "status": source.status,
        "processedAt": rfc3339(source.processed_at),
        "executionState": source.execution_state,
        "errorMessage": source.error_message,
    }


def graph_payload(graph: Graph) -> dict[str, Any]:
    """The `GraphExecutionMetadata` of the contract, as stored in the event log."""
    return {
        "graphId": graph.id,
        "nodeCount": graph.node_count,
        "edgeCount": graph.edge_count,
        "executionState": graph.execution_state,
        "computedDate": rfc3339(graph.computed_date),
        "errorMessage": graph.error_message,
    }
