"""Reading a project's event log back the way a client would, for the consistency tests."""

from __future__ import annotations

from typing import Any

from actors.events import node_events
from actors.messages import PlanChanged
from actors.state import message_from_row
from bench.logcheck import NodeEvent, Reset
from storage import queries
from storage.db import Database
from storage.models import ExecutionEvent


def log_rows(db: Database, pid: int) -> list[ExecutionEvent]:
    with db.read() as s:
        return list(queries.events_after(s, pid, 0))


def node_log(rows: list[ExecutionEvent]) -> tuple[list[NodeEvent], list[Reset]]:
    """The node events of the log, (sequence, node id, execution metadata), and the resets:
    a node removed, or re-pointed to another entity, by a plan edit has no state from that
    sequence on (until a change names it again)."""
    events: list[NodeEvent] = []
    resets: list[Reset] = []
    named: dict[str, tuple[str, Any]] = {}  # node id -> what it names (type, source id)
    for row in rows:
        message = message_from_row(row)
        if isinstance(message, PlanChanged):
            change = message.change
            if change["type"] != "node":
                continue
            node = change["node"]
            before = named.pop(node["id"], None)
            if change["operation"] != "removed":
                named[node["id"]] = (node["nodeType"], (node["config"] or {}).get("dataSourceId"))
            if change["operation"] == "removed" or before != named.get(node["id"], before):
                resets.append((message.sequence, node["id"]))
            continue
        for event in node_events(message):
            execution = event["datasourceExecution"] or event["graphExecution"]
            events.append((event["sequence"], event["nodeId"], execution))
    return events, resets


def plan_as_of_each_change(rows: list[ExecutionEvent]) -> list[tuple[ExecutionEvent, Any]]:
    """Each state-change row with the resolution the plan edits logged before it imply."""
    plan: dict[str, dict[str, Any]] = {}
    out = []
    for row in rows:
        if row.entity == "plan":
            change = row.payload
            if change["type"] == "node":
                node = change["node"]
                if change["operation"] == "removed":
                    plan.pop(node["id"], None)
                else:
                    plan[node["id"]] = node
            continue
        if row.entity == "datasource":
            expected = sorted(
                [node_id, "DataSourceNode"]
                for node_id, node in plan.items()
                if node["nodeType"] == "DataSourceNode"
                and (node["config"] or {}).get("dataSourceId") == row.entity_id
            )
        else:
            node = plan.get(row.node_id or "")
            expected = [[row.node_id, node["nodeType"]]] if node else []
        out.append((row, expected))
    return out
