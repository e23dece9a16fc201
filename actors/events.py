"""From a state change to the contract's NodeExecutionStatusEvents (pure, no I/O).

Shared by the project actor (which resolves node ids through its cache) and the
`executionEvents` query (which resolves them from one read of the plan), so an event looks
the same whether it arrives live, by replay or by query.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from actors.messages import StatusChanged

NodesOfSource = Callable[[int], Sequence[str]]
TypeOfNode = Callable[[str], str | None]


def node_events(
    change: StatusChanged, nodes_of_source: NodesOfSource, type_of_node: TypeOfNode
) -> list[dict[str, Any]]:
    """One NodeExecutionStatusEvent per Plan DAG node the change concerns.

    A data source named by several DataSourceNodes gives one event per node, all with the
    change's sequence: (sequence, nodeId) identifies an event. A graph whose node has been
    deleted since gives none: nobody can show its badge.
    """
    if change.entity == "datasource":
        return [
            {
                "projectId": change.project_id,
                "nodeId": node_id,
                "nodeType": "DataSourceNode",
                "datasourceExecution": change.state,
                "graphExecution": None,
                "timestamp": change.timestamp,
                "sequence": change.sequence,
            }
            for node_id in nodes_of_source(change.entity_id)
        ]
    node_id = change.node_id or ""
    node_type = type_of_node(node_id)
    if node_type is None:
        return []
    return [
        {
            "projectId": change.project_id,
            "nodeId": node_id,
            "nodeType": node_type,
            "datasourceExecution": None,
            "graphExecution": change.state,
            "timestamp": change.timestamp,
            "sequence": change.sequence,
        }
    ]
