"""Plan execution through the real executors, on a real SQLite file."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from actors.plan import PlanRefused
from gateway.app import App, AppConfig
from gateway.server import GatewayConfig
from storage import queries
from tests.helpers import wait_until
from tests.plan_helpers import (
    CALLS,
    SERVICES,
    Gate,
    add_node,
    add_source,
    assert_legal,
    states_by_node,
)


@pytest.fixture
def make_app(sqlite_url: str) -> Iterator[Any]:
    apps: list[App] = []

    def make(**kwargs: Any) -> App:
        app = App(AppConfig(database_url=sqlite_url, gateway=GatewayConfig(port=0)), **kwargs)
        apps.append(app)
        return app

    yield make
    for app in apps:
        asyncio.run(app.stop())


def _project(app: App) -> int:
    with app.db.write() as s:
        return queries.create_project(s, "plan").id


def _graph(app: App, pid: int, node_id: str) -> Any:
    with app.db.read() as s:
        return queries.get_graph_by_node(s, pid, node_id)


def test_graph_merge_transform_output(make_app: Any) -> None:
    app = make_app()
    pid = _project(app)
    nodes = add_source(app.db, pid, "services", SERVICES)
    edges = add_source(app.db, pid, "calls", CALLS, data_type="edges")
    add_node(app.db, pid, "graph", "GraphNode", nodes, edges)
    add_node(
        app.db,
        pid,
        "apps",
        "TransformNode",
        "graph",
        config={"transforms": [{"kind": "keep_layers", "params": {"layers": ["app"]}}]},
    )
    add_node(app.db, pid, "out", "OutputNode", "apps")
    app.executors.plans.run(pid)
    outcomes = app.executors.plans.wait(pid)
    assert set(outcomes.values()) == {"completed"}
    graph = _graph(app, pid, "graph")
    assert (graph.node_count, graph.edge_count) == (4, 3)
    apps = _graph(app, pid, "apps")
    assert (apps.node_count, apps.edge_count) == (2, 1)  # web, api and e1 only
    assert _graph(app, pid, "out").execution_state == "completed"
    assert_legal(states_by_node(app.db, pid))


def test_unchanged_inputs_skip_the_work_but_still_complete(make_app: Any) -> None:
    app = make_app()
    pid = _project(app)
    nodes = add_source(app.db, pid, "services", SERVICES)
    add_node(app.db, pid, "graph", "GraphNode", nodes)
    app.executors.plans.run(pid)
    app.executors.plans.wait(pid)
    first = _graph(app, pid, "graph")
    app.executors.plans.run(pid, "graph")
    app.executors.plans.wait(pid)
    second = _graph(app, pid, "graph")
    assert second.execution_state == "completed"
    assert second.source_hash == first.source_hash
    assert second.computed_date >= first.computed_date
    states = states_by_node(app.db, pid)["graph"]
    assert states == ["pending", "processing", "completed"] * 2


def test_edge_to_missing_node_is_an_error_naming_the_edge(make_app: Any) -> None:
    app = make_app()
    pid = _project(app)
    nodes = add_source(app.db, pid, "services", SERVICES)
    edges = add_source(app.db, pid, "calls", "id,source,target\nbad1,web,nowhere\n", "edges")
    add_node(app.db, pid, "graph", "GraphNode", nodes, edges)
    app.executors.plans.run(pid)
    outcomes = app.executors.plans.wait(pid)
    assert outcomes["graph"] == "error"
    graph = _graph(app, pid, "graph")
    assert "bad1" in graph.error_message and "nowhere" in graph.error_message


def test_transform_needs_exactly_one_input(make_app: Any) -> None:
    app = make_app()
    pid = _project(app)
    a = add_source(app.db, pid, "a", SERVICES)
    b = add_source(app.db, pid, "b", SERVICES)
    add_node(app.db, pid, "t", "TransformNode", a, b)
    app.executors.plans.run(pid)
    assert app.executors.plans.wait(pid)["t"] == "error"
    assert "exactly one input" in _graph(app, pid, "t").error_message


def test_cycle_is_refused_naming_its_nodes(make_app: Any) -> None:
    app = make_app()
    pid = _project(app)
    add_node(app.db, pid, "a", "GraphNode")
    add_node(app.db, pid, "b", "GraphNode", "a")
    add_node(app.db, pid, "c", "MergeNode", "b")
    with app.db.write() as s:
        queries.add_edge(s, pid, source="c", target="a", edge_id="back")
    with pytest.raises(PlanRefused, match="cycle") as refused:
        app.executors.plans.run(pid)
    assert all(name in str(refused.value) for name in ("a", "b", "c"))


def test_twenty_node_plan_with_a_failure_and_a_stop(make_app: Any) -> None:
    gate = Gate("a4")
    app = make_app(before_node=gate)
    pid = _project(app)
    # Branch A: two good sources → graph → a1..a8 → outA (12 nodes)
    a_nodes = add_source(app.db, pid, "services", SERVICES)
    a_edges = add_source(app.db, pid, "calls", CALLS, data_type="edges")
    previous = add_node(app.db, pid, "graphA", "GraphNode", a_nodes, a_edges)
    for i in range(1, 9):
        previous = add_node(app.db, pid, f"a{i}", "TransformNode", previous)
    add_node(app.db, pid, "outA", "OutputNode", previous)
    # Branch B: a bad source → graph → b1..b6 → outB (9 nodes), none of which may run
    b_source = add_source(app.db, pid, "broken", "id,name\nx,y\n")
    previous = add_node(app.db, pid, "graphB", "GraphNode", b_source)
    for i in range(1, 7):
        previous = add_node(app.db, pid, f"b{i}", "TransformNode", previous)
    add_node(app.db, pid, "outB", "OutputNode", previous)

    plan = app.executors.plans.run(pid)
    assert len(plan.order) == 21
    assert gate.reached.wait(20), "branch A reached a4"

    def branch_b_settled() -> bool:
        out_b = _graph(app, pid, "outB")
        return out_b is not None and out_b.execution_state == "not_started"

    wait_until(branch_b_settled, what="branch B skipped after its failure")
    assert app.executors.plans.stop(pid)
    wait_until(lambda: _graph(app, pid, "a4").execution_state == "not_started", what="a4 reset")
    gate.release.set()
    outcomes = app.executors.plans.wait(pid)

    assert outcomes[b_source] == "error"
    assert {outcomes[n] for n in ["graphB", "b1", "b6", "outB"]} == {"skipped"}
    assert {outcomes[n] for n in [a_nodes, a_edges, "graphA", "a1", "a3"]} == {"completed"}
    assert outcomes["a4"] == "stopped"
    assert {outcomes[n] for n in ["a5", "a8", "outA"]} == {"stopped"}
    assert "not run" in _graph(app, pid, "b3").error_message
    for node_id in ("a4", "a5", "outA"):
        graph = _graph(app, pid, node_id)
        assert (graph.execution_state, graph.error_message) == (
            "not_started",
            "Execution stopped by user",
        )
    states = states_by_node(app.db, pid)
    assert_legal(states)
    assert states["a4"] == ["pending", "processing", "not_started"]
    assert states["a6"] == ["pending", "not_started"]
    assert len(states) == 21


def test_execute_node_runs_only_what_it_depends_on(make_app: Any) -> None:
    app = make_app()
    pid = _project(app)
    nodes = add_source(app.db, pid, "services", SERVICES)
    add_node(app.db, pid, "graph", "GraphNode", nodes)
    add_node(app.db, pid, "other", "GraphNode", add_source(app.db, pid, "x", SERVICES))
    plan = app.executors.plans.run(pid, "graph")
    assert [n.id for n in plan.order] == [nodes, "graph"]
    app.executors.plans.wait(pid)
    assert _graph(app, pid, "other") is None
