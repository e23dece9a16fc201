"""What one plan node computes: its inputs read from the store, its graph built (pure)."""

from __future__ import annotations

from typing import Any

from actors import processing
from actors.plan import PlanNode, RunPlan
from actors.processing import GraphData, ProcessingError
from actors.state import StateStore
from storage import queries
from storage.retry import retrying


class InputNotReady(Exception):
    """An input node has no usable result; the message says which and why."""


def build_graph(node: PlanNode, inputs: list[GraphData]) -> GraphData:
    """The result of a graph-like node from its inputs' graphs (pure)."""
    kind = node.node_type
    if kind in ("GraphNode", "MergeNode"):
        if not inputs:
            raise ProcessingError(
                f"{kind} '{node.id}' has no input: connect a data source or a graph to it"
            )
        return processing.merge_graphs(inputs)
    if kind == "TransformNode":
        if len(inputs) != 1:
            raise ProcessingError(
                f"TransformNode '{node.id}' needs exactly one input, it has {len(inputs)}"
            )
        return processing.apply_transforms(inputs[0], node.config)
    # CopyNode and OutputNode do no work: they pass their input through.
    return processing.merge_graphs(inputs) if inputs else GraphData()


def parse_stored_source(store: StateStore, data_source_id: int) -> GraphData:
    """Read a data source's file and parse it (the read is short; parsing happens after)."""

    def read() -> tuple[Any, str, str]:
        with store.db.read() as s:
            source = queries.require_data_source(s, data_source_id)
            return source.content, source.file_format, source.data_type

    content, file_format, data_type = retrying(
        read, what=f"reading data source {data_source_id}", deadline=store.deadline
    )
    return processing.parse_data_source(content, file_format, data_type)


def read_inputs(
    store: StateStore, project_id: int, node: PlanNode, plan: RunPlan
) -> list[GraphData]:
    return retrying(
        lambda: _read_inputs(store, project_id, node, plan),
        what=f"reading the inputs of node '{node.id}'",
        deadline=store.deadline,
    )


def _read_inputs(
    store: StateStore, project_id: int, node: PlanNode, plan: RunPlan
) -> list[GraphData]:
    graphs = []
    with store.db.read() as s:
        for input_id in node.inputs:
            upstream = plan.by_id[input_id]
            if upstream.node_type == "DataSourceNode":
                source = queries.require_data_source(s, upstream.data_source_id)  # type: ignore[arg-type]
                if source.status != "active" or source.graph_json is None:
                    raise InputNotReady(
                        f"input '{input_id}': data source {source.id} is {source.status}"
                    )
                graphs.append(GraphData.from_json(source.graph_json))
            else:
                row = queries.get_graph_by_node(s, project_id, input_id)
                if row is None or row.execution_state != "completed" or row.graph_json is None:
                    state = row.execution_state if row else "not_started"
                    raise InputNotReady(f"input '{input_id}' is {state}, not completed")
                graphs.append(GraphData.from_json(row.graph_json))
    return graphs
