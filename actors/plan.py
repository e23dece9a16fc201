"""Planning a run of a Plan DAG (read, checked, ordered) before anything starts.

The run itself is actors/plan_run.py; a node's state writes actors/node_states.py; what a
node computes actors/node_build.py.

State rules of a run (every change persisted, then published):

    not_started/…  → pending        every node of the run, before anything starts
    pending        → processing     when a worker takes the node
    processing     → completed | error
    pending        → not_started    the node will not run: an input failed, or a stop
    processing     → not_started    a stop while the node was running
    pending/processing → error      the run cannot go on (its database writes keep
                                    failing, a bug): the message says so

A worker's writes are guarded by the state it expects, so that a stopped node never flips
back to completed (actors/node_states.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from actors.dag import CycleError, inputs_of, topological_order, upstream_closure
from actors.state import StateStore
from storage import queries
from storage.retry import retrying

STOPPED = "Execution stopped by user"

# Called with (project id, node id) before a node runs (tests hold a node there).
NodeHook = Callable[[int, str], None]


class PlanRefused(ValueError):
    """A run that cannot start (cycle, unknown node, missing data source); for people."""


@dataclass(frozen=True, slots=True)
class PlanNode:
    id: str
    node_type: str
    config: dict[str, Any]
    inputs: tuple[str, ...]

    @property
    def data_source_id(self) -> int | None:
        value = self.config.get("dataSourceId")
        return value if isinstance(value, int) else None


@dataclass
class RunPlan:
    """What a run will do, checked before it starts."""

    project_id: int
    order: list[PlanNode]
    by_id: dict[str, PlanNode] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_id = {node.id: node for node in self.order}


def plan_for(store: StateStore, project_id: int, target: str | None) -> RunPlan:
    """Read the DAG and decide the run: the whole plan, or `target` and its upstream."""

    def read() -> tuple[dict[str, Any], list[tuple[str, str]], set[int]]:
        with store.db.read() as s:
            queries.require_project(s, project_id)
            nodes = {n.id: n for n in queries.list_nodes(s, project_id)}
            edges = [(e.source, e.target) for e in queries.list_edges(s, project_id)]
            sources = {d.id for d in queries.list_data_sources(s, project_id)}
        return nodes, edges, sources

    nodes, edges, sources = retrying(
        read, what=f"reading project {project_id}'s plan", deadline=store.deadline
    )
    if target is not None and target not in nodes:
        raise PlanRefused(f"node '{target}' does not exist in project {project_id}")
    inputs = inputs_of(nodes, edges)
    selected = upstream_closure(target, inputs) if target is not None else set(nodes)
    inputs = {n: [i for i in inputs[n] if i in selected] for n in selected}
    try:
        order = topological_order(inputs)
    except CycleError as error:
        raise PlanRefused(str(error)) from error
    plan_nodes = []
    for node_id in order:
        row = nodes[node_id]
        node = PlanNode(node_id, row.node_type, dict(row.config or {}), tuple(inputs[node_id]))
        if node.node_type == "DataSourceNode":
            if node.data_source_id is None:
                raise PlanRefused(
                    f"node '{node_id}' (DataSourceNode) names no data source: "
                    "set config.dataSourceId"
                )
            if node.data_source_id not in sources:
                raise PlanRefused(
                    f"node '{node_id}' names data source {node.data_source_id}, "
                    f"which does not exist in project {project_id}"
                )
        plan_nodes.append(node)
    return RunPlan(project_id, plan_nodes)
