"""Building plans for tests, and checking an event log against the state rules."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

from actors.events import node_events
from actors.state import message_from_row
from storage import queries
from storage.db import Database

SERVICES = "id,label,layer\nweb,Web,app\napi,API,app\ndb,Database,data\ncache,Cache,data\n"
CALLS = "id,source,target\ne1,web,api\ne2,api,db\ne3,api,cache\n"

# A node's states during runs: every change must be one of these (DESIGN.md / plan.py).
LEGAL = {
    ("not_started", "pending"),
    ("completed", "pending"),
    ("error", "pending"),
    ("pending", "processing"),
    ("pending", "error"),  # the run cannot go on (actors/plan_run.py PlanRun._abort)
    ("processing", "completed"),
    ("processing", "error"),
    ("pending", "not_started"),
    ("processing", "not_started"),
}


def add_source(db: Database, pid: int, name: str, content: str, data_type: str = "nodes") -> str:
    with db.write() as s:
        source, node = queries.create_data_source(
            s,
            pid,
            name=name,
            filename=f"{name}.csv",
            file_format="csv",
            data_type=data_type,
            content=content,
        )
        assert node is not None
        return node.id


def add_node(
    db: Database,
    pid: int,
    node_id: str,
    node_type: str,
    *inputs: str,
    config: dict[str, Any] | None = None,
) -> str:
    with db.write() as s:
        queries.add_node(s, pid, node_type=node_type, node_id=node_id, config=config or {})
        for source in inputs:
            queries.add_edge(s, pid, source=source, target=node_id, edge_id=f"{source}->{node_id}")
    return node_id


def states_by_node(db: Database, pid: int) -> dict[str, list[str]]:
    """Every node's states in log order, as subscribers saw them."""
    with db.read() as s:
        rows = queries.events_after(s, pid, 0)
    states: dict[str, list[str]] = defaultdict(list)
    sequences = [row.sequence for row in rows]
    assert sequences == list(range(1, len(rows) + 1)), "sequences are 1..n with no gap"
    for row in rows:
        for event in node_events(message_from_row(row)):
            state = (event["datasourceExecution"] or event["graphExecution"])["executionState"]
            states[event["nodeId"]].append(state)
    return dict(states)


def assert_legal(states: dict[str, list[str]]) -> None:
    for node_id, sequence in states.items():
        previous = "not_started"
        for state in sequence:
            if state == previous == "processing":
                raise AssertionError(f"{node_id}: processing twice in a row: {sequence}")
            if state != previous and (previous, state) not in LEGAL:
                raise AssertionError(f"{node_id}: illegal {previous} → {state} in {sequence}")
            previous = state
        assert sequence[-1] not in ("pending", "processing"), f"{node_id} left {sequence[-1]}"


class Gate:
    """Holds one node in its worker until released (the executors' `before_node` hook), so
    that a stop or a dropped connection lands mid-run every time, not by luck."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.reached = threading.Event()
        self.release = threading.Event()

    def __call__(self, _project_id: int, node_id: str) -> None:
        if node_id == self.node_id:
            self.reached.set()
            assert self.release.wait(30), "the test never released the gate"
