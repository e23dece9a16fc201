"""The contract's types as plain dicts, from storage rows.

graphql-core's default resolver serves every field of these dicts, so a resolver only has
to return the right shape.
"""

from __future__ import annotations

from typing import Any

from storage import payloads, queries
from storage.models import DataSource, Graph, PlanDagEdge, PlanDagNode, Project


def project_dict(p: Project) -> dict[str, Any]:
    return {
        "id": p.id,
        "name": p.name,
        "description": p.description,
        "createdAt": payloads.rfc3339(p.created_at),
        "updatedAt": payloads.rfc3339(p.updated_at),
    }


def node_dict(n: PlanDagNode, execution_state: str = "not_started") -> dict[str, Any]:
    payload = payloads.plan_node_payload(n)
    x, y = n.position_x, n.position_y
    position = None if x is None or y is None else {"x": x, "y": y}
    return {**payload, "position": position, "executionState": execution_state}


def edge_dict(e: PlanDagEdge) -> dict[str, Any]:
    return payloads.plan_edge_payload(e)


def data_source_dict(d: DataSource) -> dict[str, Any]:
    return {
        "id": d.id,
        "projectId": d.project_id,
        "name": d.name,
        "filename": d.filename,
        "fileFormat": d.file_format,
        "dataType": d.data_type,
        "status": d.status,
        "executionState": d.execution_state,
        "errorMessage": d.error_message,
        "processedAt": payloads.rfc3339(d.processed_at),
    }


def graph_dict(g: Graph) -> dict[str, Any]:
    return {
        "id": g.id,
        "projectId": g.project_id,
        "nodeId": g.node_id,
        "executionState": g.execution_state,
        "nodeCount": g.node_count,
        "edgeCount": g.edge_count,
        "computedDate": payloads.rfc3339(g.computed_date),
        "errorMessage": g.error_message,
    }


def node_execution_states(s: Any, project_id: int, nodes: list[PlanDagNode]) -> dict[str, str]:
    """Each node's current executionState: its data source's, or its graph's."""
    sources = {d.id: d.execution_state for d in queries.list_data_sources(s, project_id)}
    graphs = {g.node_id: g.execution_state for g in queries.list_graphs(s, project_id)}
    states = {}
    for node in nodes:
        if node.node_type == "DataSourceNode":
            source_id = (node.config or {}).get("dataSourceId")
            states[node.id] = sources.get(source_id, "not_started")
        else:
            states[node.id] = graphs.get(node.id, "not_started")
    return states
