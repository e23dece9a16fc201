"""From a logged plan edit to the planDagChanged and planDagDeltaChanged events (pure).

A plan edit is persisted with everything these events need (the node or edge, the
editor's userId, the JSON Patch against the planDag shape, computed in the transaction
that made the edit), so the live path, a resume and any process build the same event
from the same row, once per edit (not per subscriber).
"""

from __future__ import annotations

from typing import Any

from actors.messages import LoggedChange, PlanChanged

STATUS, PLAN, DELTA = "status", "plan", "delta"

_CHANGE_TYPE = {"node": "NODE_CHANGED", "edge": "EDGE_CHANGED", "metadata": "METADATA_CHANGED"}


def change_node(node: dict[str, Any]) -> dict[str, Any]:
    """A plan-edit node payload in the frontend's shape (position {x y}, metadata object)."""
    x, y = node.get("positionX"), node.get("positionY")
    metadata = node.get("metadata") if isinstance(node.get("metadata"), dict) else None
    return {
        "id": node["id"],
        "nodeType": node["nodeType"],
        "position": None if x is None or y is None else {"x": x, "y": y},
        "metadata": metadata,
        "config": node.get("config") or {},
    }


def plan_dag_events(change: LoggedChange) -> list[dict[str, Any]]:
    """The one PlanDagChangedEvent of a plan edit (none for a state change)."""
    if not isinstance(change, PlanChanged):
        return []
    edit = change.change
    kind = edit["type"]
    if kind == "node":
        body = {
            "__typename": "PlanDagNodeChange",
            "node": change_node(edit["node"]),
            "operation": edit["operation"],
        }
    elif kind == "edge":
        body = {
            "__typename": "PlanDagEdgeChange",
            "edge": edit["edge"],
            "operation": edit["operation"],
        }
    else:
        body = {"__typename": "PlanDagMetadataChange", "metadata": edit.get("metadata") or {}}
    return [
        {
            "type": _CHANGE_TYPE.get(kind, "METADATA_CHANGED"),
            "projectId": change.project_id,
            "changeId": str(change.sequence),
            "timestamp": change.timestamp,
            "userId": edit.get("userId"),
            "change": body,
            "sequence": change.sequence,
        }
    ]


def delta_events(change: LoggedChange) -> list[dict[str, Any]]:
    """The one PlanDagDelta of a plan edit: its persisted JSON Patch, with its version."""
    if not isinstance(change, PlanChanged):
        return []
    edit = change.change
    return [
        {
            "projectId": change.project_id,
            "planId": change.project_id,
            "clientId": None,
            "version": change.sequence,
            "sequence": change.sequence,
            "userId": edit.get("userId"),
            "timestamp": change.timestamp,
            "operations": [
                {
                    "op": op["op"],
                    "path": op["path"],
                    "value": op.get("value"),
                    "from": op.get("from"),
                }
                for op in edit.get("patch") or ()
            ],
        }
    ]
