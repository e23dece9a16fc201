"""Persisting a plan node's state, whatever its kind (data source or graph), guarded.

A worker's writes are guarded by the state it expects (pending before processing,
processing before the end). A stop resets the row first, so the worker's late write finds
the row moved on and is dropped: a stopped node never flips back to completed.
"""

from __future__ import annotations

from actors.bus import Bus, publish_committed
from actors.plan import PlanNode
from actors.processing import GraphData
from actors.state import StateStore, Superseded, set_source_state
from storage.models import DataSource, Graph, utcnow


class NodeStates:
    """Writes (guarded) and publishes the state of plan nodes."""

    def __init__(self, store: StateStore, bus: Bus, project_id: int) -> None:
        self.store = store
        self.bus = bus
        self.project_id = project_id

    def set(
        self,
        node: PlanNode,
        state: str,
        *,
        expect: tuple[str, ...] | None = None,
        error: str | None = None,
        graph: GraphData | None = None,
        source_hash: str | None = None,
    ) -> bool:
        """Move the node to `state` if it is in one of `expect`; False if it was not."""
        try:
            if node.node_type == "DataSourceNode":
                change = self.store.data_source(
                    node.data_source_id,  # type: ignore[arg-type]
                    lambda row: _source_change(row, state, expect, error, graph),
                )
            else:
                change = self.store.graph(
                    self.project_id,
                    node.id,
                    lambda row: _graph_change(row, state, expect, error, graph, source_hash),
                )
        except Superseded:
            return False
        publish_committed(self.bus, change)
        return True


def _check(current: str, expect: tuple[str, ...] | None) -> None:
    if expect is not None and current not in expect:
        raise Superseded(current)


def _source_change(
    row: DataSource,
    state: str,
    expect: tuple[str, ...] | None,
    error: str | None,
    graph: GraphData | None,
) -> None:
    _check(row.execution_state, expect)
    set_source_state(
        row, state, error=error, graph_json=graph.to_json() if graph is not None else None
    )


def _graph_change(
    row: Graph,
    state: str,
    expect: tuple[str, ...] | None,
    error: str | None,
    graph: GraphData | None,
    source_hash: str | None,
) -> None:
    _check(row.execution_state, expect)
    row.execution_state = state
    row.error_message = error
    if state == "completed" and graph is not None:
        row.graph_json = graph.to_json()
        row.node_count = graph.node_count
        row.edge_count = graph.edge_count
        row.source_hash = source_hash
        row.computed_date = utcnow()
