"""From a state change to the contract's NodeExecutionStatusEvents (pure, no I/O).

Shared by the project actor (live, replay, snapshot) and the `executionEvents` query, so
an event looks the same whichever way it arrives. The nodes come from the change itself:
they were resolved when it was persisted (`StatusChanged.nodes`), never from a plan read
later.
"""

from __future__ import annotations

from typing import Any

from actors.messages import LoggedChange, StatusChanged


def node_events(change: LoggedChange) -> list[dict[str, Any]]:
    """One NodeExecutionStatusEvent per Plan DAG node the change names (none for a plan edit).

    A data source named by several DataSourceNodes gives one event per node, all with the
    change's sequence: (sequence, nodeId) identifies an event. A graph whose node had been
    deleted when the change was persisted names no node, so it gives none.
    """
    if not isinstance(change, StatusChanged):
        return []
    datasource = change.entity == "datasource"
    # The frontend's newer document names the same state `datasetExecution { dataSetId }`:
    # one renamed copy per change (not per node or subscriber), so both generations of the
    # document are answered from the same stored event.
    dataset = dataset_state(change.state) if datasource else None
    return [
        {
            "projectId": change.project_id,
            "nodeId": node_id,
            "nodeType": node_type,
            "datasourceExecution": change.state if datasource else None,
            "datasetExecution": dataset,
            "graphExecution": None if datasource else change.state,
            "timestamp": change.timestamp,
            "sequence": change.sequence,
        }
        for node_id, node_type in change.nodes
    ]


def dataset_state(state: dict[str, Any]) -> dict[str, Any]:
    """A data source's state under the newer document's names (`dataSetId`)."""
    renamed = {k: v for k, v in state.items() if k != "dataSourceId"}
    renamed["dataSetId"] = state.get("dataSourceId")
    return renamed
