"""The resolvers of the schema's Query, Mutation and Subscription fields, and their table.

Resolvers are synchronous and run on the gateway's worker threads (never on the event
loop): each reads or writes in one transaction, then publishes what changed after commit.
They return plain dicts shaped like the contract's types (gateway/shapes.py), so
graphql-core's default resolver serves every field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from graphql import GraphQLError, GraphQLResolveInfo

from actors import processing
from actors.bus import publish_committed
from actors.events import node_events
from actors.executors import WorkSink
from actors.messages import LoggedChange
from actors.plan import PlanRefused
from actors.state import named_source, status_from_row
from gateway import plan_edits
from gateway.plan_edits import check_plan, with_patch
from gateway.services import RequestContext
from gateway.shapes import (
    data_source_dict,
    edge_dict,
    graph_dict,
    node_dict,
    node_execution_states,
    project_dict,
)
from storage import payloads, queries
from storage.models import PlanDagEdge, utcnow

MAX_EVENTS_PAGE = 1000


# --- helpers ------------------------------------------------------------------------------


def _ctx(info: GraphQLResolveInfo) -> RequestContext:
    return info.context


def _user(ctx: RequestContext) -> str | None:
    """The editor named in plan-edit payloads (set per connection by the gateway)."""
    return ctx.user_id


def _publish(ctx: RequestContext, logged: list[LoggedChange]) -> None:
    """After commit: the plan edit (and what it logged with it), in sequence order."""
    for message in logged:
        publish_committed(ctx.services.bus, message)


def _node_fields(node: dict[str, Any]) -> dict[str, Any]:
    return {
        "node_type": node["nodeType"],
        "config": node["config"],
        "metadata": node.get("metadata"),
        "position_x": node.get("positionX"),
        "position_y": node.get("positionY"),
    }


# --- Query --------------------------------------------------------------------------------


def resolve_projects(_root: Any, info: GraphQLResolveInfo) -> list[dict[str, Any]]:
    ctx = _ctx(info)
    with ctx.services.db.read() as s:
        return [
            project_dict(p)
            for p in queries.list_projects(s)
            if ctx.scope is None or p.id in ctx.scope
        ]


def resolve_project(_root: Any, info: GraphQLResolveInfo, id: int) -> dict[str, Any] | None:
    ctx = _ctx(info)
    ctx.check_project(id)
    with ctx.services.db.read() as s:
        project = queries.get_project(s, id)
        return project_dict(project) if project else None


def resolve_plan_dag(
    _root: Any, info: GraphQLResolveInfo, projectId: int, planId: int | None = None
) -> dict[str, Any] | None:
    ctx = _ctx(info)
    ctx.check_project(projectId)
    check_plan(projectId, planId)
    with ctx.services.db.read() as s:
        project = queries.get_project(s, projectId)
        if project is None:
            return None
        nodes = list(queries.list_nodes(s, projectId))
        states = node_execution_states(s, projectId, nodes)
        return {
            "projectId": projectId,
            "nodes": [node_dict(n, states[n.id]) for n in nodes],
            "edges": [edge_dict(e) for e in queries.list_edges(s, projectId)],
            "version": queries.last_sequence(s, projectId),
            "metadata": queries.plan_metadata(s, project),
        }


def resolve_data_sources(
    _root: Any, info: GraphQLResolveInfo, projectId: int
) -> list[dict[str, Any]]:
    ctx = _ctx(info)
    ctx.check_project(projectId)
    with ctx.services.db.read() as s:
        return [data_source_dict(d) for d in queries.list_data_sources(s, projectId)]


def resolve_graphs(_root: Any, info: GraphQLResolveInfo, projectId: int) -> list[dict[str, Any]]:
    ctx = _ctx(info)
    ctx.check_project(projectId)
    with ctx.services.db.read() as s:
        return [graph_dict(g) for g in queries.list_graphs(s, projectId)]


def resolve_execution_events(
    _root: Any,
    info: GraphQLResolveInfo,
    projectId: int,
    afterSequence: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    ctx = _ctx(info)
    ctx.check_project(projectId)
    if limit < 1 or limit > MAX_EVENTS_PAGE:
        raise GraphQLError(f"limit must be between 1 and {MAX_EVENTS_PAGE}, got {limit}")
    with ctx.services.db.read() as s:
        queries.require_project(s, projectId)
        rows = queries.events_after(s, projectId, afterSequence or 0, limit, status_only=True)
    events: list[dict[str, Any]] = []
    for row in rows:
        events.extend(node_events(status_from_row(row)))
    return events


# --- Mutation -----------------------------------------------------------------------------


def resolve_create_project(
    _root: Any, info: GraphQLResolveInfo, input: dict[str, Any]
) -> dict[str, Any]:
    ctx = _ctx(info)
    if ctx.scope is not None:
        raise GraphQLError(
            "this token is scoped to projects and cannot create one: use an admin token",
            extensions={"code": "FORBIDDEN"},
        )
    with ctx.services.db.write() as s:
        return project_dict(queries.create_project(s, input["name"], input.get("description")))


def resolve_delete_project(_root: Any, info: GraphQLResolveInfo, id: int) -> bool:
    ctx = _ctx(info)
    ctx.check_project(id)
    with ctx.services.db.write() as s:
        return queries.delete_project(s, id)


def resolve_add_node(
    _root: Any, info: GraphQLResolveInfo, projectId: int, node: dict[str, Any]
) -> dict[str, Any]:
    ctx = _ctx(info)
    ctx.check_project(projectId)
    store = ctx.services.store
    with ctx.services.db.write() as s:
        plan_edits.lock_plan(s, projectId)
        row = queries.add_node(s, projectId, node_id=node.get("id"), **_node_fields(node))
        result = node_dict(row, node_execution_states(s, projectId, [row])[row.id])
        at = plan_edits.node_index(s, projectId, row.id)
        patch = [{"op": "add", "path": f"/nodes/{at}", "value": result}]
        change = with_patch(payloads.node_change("added", row), _user(ctx), patch)
        logged = store.plan_edit(s, projectId, change, names_source_of=row)
    _publish(ctx, logged)
    return result


def resolve_update_node(
    _root: Any, info: GraphQLResolveInfo, projectId: int, nodeId: str, node: dict[str, Any]
) -> dict[str, Any]:
    ctx = _ctx(info)
    ctx.check_project(projectId)
    store = ctx.services.store
    with ctx.services.db.write() as s:
        plan_edits.lock_plan(s, projectId)
        named_before = named_source(queries.require_node(s, projectId, nodeId))
        row = queries.update_node(s, projectId, nodeId, **_node_fields(node))
        result = node_dict(row, node_execution_states(s, projectId, [row])[row.id])
        at = plan_edits.node_index(s, projectId, row.id)
        patch = [{"op": "replace", "path": f"/nodes/{at}", "value": result}]
        change = with_patch(payloads.node_change("updated", row), _user(ctx), patch)
        # Announce the source only to a node that names it anew (not on a label edit).
        newly = row if named_source(row) != named_before else None
        logged = store.plan_edit(s, projectId, change, names_source_of=newly)
    _publish(ctx, logged)
    return result


def resolve_delete_node(_root: Any, info: GraphQLResolveInfo, projectId: int, nodeId: str) -> bool:
    ctx = _ctx(info)
    ctx.check_project(projectId)
    store = ctx.services.store
    logged: list[LoggedChange] = []
    with ctx.services.db.write() as s:
        plan_edits.lock_plan(s, projectId)
        row = queries.get_node(s, projectId, nodeId)
        if row is None:
            return False
        # Its edges go with it: each removal is an edit of its own, before the node's.
        edge_ids = [e.id for e in queries.list_edges(s, projectId)]
        for edge in queries.edges_of_node(s, projectId, nodeId):
            at = edge_ids.index(edge.id)
            edge_ids.pop(at)
            patch = [{"op": "remove", "path": f"/edges/{at}"}]
            change = with_patch(payloads.edge_change("removed", edge), _user(ctx), patch)
            logged += store.plan_edit(s, projectId, change)
        patch = [{"op": "remove", "path": f"/nodes/{plan_edits.node_index(s, projectId, nodeId)}"}]
        change = with_patch(payloads.node_change("removed", row), _user(ctx), patch)
        queries.delete_node(s, projectId, nodeId)
        logged += store.plan_edit(s, projectId, change)
    _publish(ctx, logged)
    return True


def resolve_add_edge(
    _root: Any, info: GraphQLResolveInfo, projectId: int, edge: dict[str, Any]
) -> dict[str, Any]:
    ctx = _ctx(info)
    ctx.check_project(projectId)
    with ctx.services.db.write() as s:
        plan_edits.lock_plan(s, projectId)
        row = queries.add_edge(
            s,
            projectId,
            source=edge["source"],
            target=edge["target"],
            edge_id=edge.get("id"),
            metadata=edge.get("metadata"),
        )
        result = edge_dict(row)
        at = plan_edits.edge_index(s, projectId, row.id)
        patch = [{"op": "add", "path": f"/edges/{at}", "value": result}]
        change = with_patch(payloads.edge_change("added", row), _user(ctx), patch)
        logged = ctx.services.store.plan_edit(s, projectId, change)
    _publish(ctx, logged)
    return result


def resolve_delete_edge(_root: Any, info: GraphQLResolveInfo, projectId: int, edgeId: str) -> bool:
    ctx = _ctx(info)
    ctx.check_project(projectId)
    with ctx.services.db.write() as s:
        plan_edits.lock_plan(s, projectId)
        row = s.get(PlanDagEdge, (projectId, edgeId))
        if row is None:
            return False
        patch = [{"op": "remove", "path": f"/edges/{plan_edits.edge_index(s, projectId, edgeId)}"}]
        change = with_patch(payloads.edge_change("removed", row), _user(ctx), patch)
        queries.delete_edge(s, projectId, edgeId)
        logged = ctx.services.store.plan_edit(s, projectId, change)
    _publish(ctx, logged)
    return True


def resolve_move_node(
    _root: Any,
    info: GraphQLResolveInfo,
    projectId: int,
    nodeId: str,
    position: dict[str, float],
    planId: int | None = None,
) -> dict[str, Any]:
    moved = _move(_ctx(info), projectId, planId, [{"nodeId": nodeId, "position": position}])
    return moved[0]


def resolve_batch_move(
    _root: Any,
    info: GraphQLResolveInfo,
    projectId: int,
    nodePositions: list[dict[str, Any]],
    planId: int | None = None,
) -> list[dict[str, Any]]:
    return _move(_ctx(info), projectId, planId, nodePositions)


def _move(
    ctx: RequestContext, project_id: int, plan_id: int | None, moves: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Position edits, one transaction, each logged as its own "moved" plan edit."""
    ctx.check_project(project_id)
    check_plan(project_id, plan_id)
    logged: list[LoggedChange] = []
    results = []
    with ctx.services.db.write() as s:
        plan_edits.lock_plan(s, project_id)
        for move in moves:
            row = queries.require_node(s, project_id, move["nodeId"])
            row.position_x = float(move["position"]["x"])
            row.position_y = float(move["position"]["y"])
            row.updated_at = utcnow()
            s.flush()
            at = plan_edits.node_index(s, project_id, row.id)
            patch = [
                {"op": "replace", "path": f"/nodes/{at}/positionX", "value": row.position_x},
                {"op": "replace", "path": f"/nodes/{at}/positionY", "value": row.position_y},
                {
                    "op": "replace",
                    "path": f"/nodes/{at}/position",
                    "value": {"x": row.position_x, "y": row.position_y},
                },
            ]
            change = with_patch(payloads.node_change("moved", row), _user(ctx), patch)
            logged += ctx.services.store.plan_edit(s, project_id, change)
            results.append(node_dict(row, node_execution_states(s, project_id, [row])[row.id]))
    _publish(ctx, logged)
    return results


def resolve_update_plan_metadata(
    _root: Any,
    info: GraphQLResolveInfo,
    projectId: int,
    metadata: dict[str, Any],
    planId: int | None = None,
) -> dict[str, Any]:
    """The plan's name and description: one plan edit whose patch replaces /metadata."""
    ctx = _ctx(info)
    ctx.check_project(projectId)
    check_plan(projectId, planId)
    with ctx.services.db.write() as s:
        plan_edits.lock_plan(s, projectId)
        project = queries.require_project(s, projectId)
        try:
            result = queries.update_plan_metadata(
                s, project, metadata["name"], metadata.get("description"), _user(ctx)
            )
        except queries.InvalidInput as error:
            raise GraphQLError(str(error), extensions={"code": "BAD_USER_INPUT"}) from error
        patch = [{"op": "replace", "path": "/metadata", "value": result}]
        change = with_patch(payloads.metadata_change(result), _user(ctx), patch)
        logged = ctx.services.store.plan_edit(s, projectId, change)
    _publish(ctx, logged)
    return result


def _presence(ctx: RequestContext, project_id: int, plan_id: Any) -> Any:
    ctx.check_project(project_id)
    check_plan(project_id, plan_id)
    presence = ctx.presence
    if presence is None:
        raise GraphQLError(
            "presence needs a WebSocket connection (graphql-transport-ws): it lasts as long "
            "as the connection",
            extensions={"code": "PRESENCE_NEEDS_CONNECTION"},
        )
    with ctx.services.db.read() as s:
        queries.require_project(s, project_id)
    return presence


def resolve_join(
    _root: Any, info: GraphQLResolveInfo, projectId: int, planId: int | None = None
) -> bool:
    _presence(_ctx(info), projectId, planId).update(projectId, {})
    return True


def resolve_leave(
    _root: Any, info: GraphQLResolveInfo, projectId: int, planId: int | None = None
) -> bool:
    _presence(_ctx(info), projectId, planId).leave(projectId)
    return True


def resolve_update_presence(
    _root: Any, info: GraphQLResolveInfo, projectId: int, planId: int | None = None, **fields: Any
) -> bool:
    presence = _presence(_ctx(info), projectId, planId)
    update: dict[str, Any] = {}
    cursor = fields.get("cursorPosition", fields.get("position"))
    if cursor is not None:
        update["cursorPosition"] = {"x": float(cursor["x"]), "y": float(cursor["y"])}
    if "selectedNodeId" in fields:
        update["selectedNodeId"] = fields["selectedNodeId"]
    presence.update(projectId, update)
    return True


def _work(ctx: RequestContext) -> WorkSink:
    if ctx.services.work is None:
        raise GraphQLError(
            "this server runs no executors (--no-executors) and has no work queue "
            "configured: start it with --bus-url redis://… and run `python run.py worker`",
            extensions={"code": "NO_EXECUTORS"},
        )
    return ctx.services.work


def resolve_create_data_source(
    _root: Any, info: GraphQLResolveInfo, input: dict[str, Any]
) -> dict[str, Any]:
    ctx = _ctx(info)
    project_id = input["projectId"]
    ctx.check_project(project_id)
    work = _work(ctx)
    try:
        processing.validate_format(input["fileFormat"], input["dataType"])
    except processing.ProcessingError as error:
        raise GraphQLError(str(error), extensions={"code": "BAD_USER_INPUT"}) from error
    with ctx.services.db.write() as s:
        plan_edits.lock_plan(s, project_id)
        source, node = queries.create_data_source(
            s,
            project_id,
            name=input["name"],
            filename=input["filename"],
            file_format=input["fileFormat"],
            data_type=input["dataType"],
            content=input["content"],
        )
        # A new source has no state to announce: its first change will name the node.
        assert node is not None
        value = node_dict(node, node_execution_states(s, project_id, [node])[node.id])
        at = plan_edits.node_index(s, project_id, node.id)
        patch = [{"op": "add", "path": f"/nodes/{at}", "value": value}]
        change = with_patch(payloads.node_change("added", node), _user(ctx), patch)
        logged = ctx.services.store.plan_edit(s, project_id, change)
        result = data_source_dict(source)
    _publish(ctx, logged)
    work.process_data_source(result["id"])
    return result


def resolve_reprocess_data_source(_root: Any, info: GraphQLResolveInfo, id: int) -> dict[str, Any]:
    ctx = _ctx(info)
    with ctx.services.db.read() as s:
        source = queries.require_data_source(s, id)
        ctx.check_project(source.project_id)
        result = data_source_dict(source)
    _work(ctx).process_data_source(id)
    return result


def resolve_execute_node(_root: Any, info: GraphQLResolveInfo, projectId: int, nodeId: str) -> bool:
    return _start_run(_ctx(info), projectId, nodeId)


def resolve_execute_plan(_root: Any, info: GraphQLResolveInfo, projectId: int) -> bool:
    return _start_run(_ctx(info), projectId, None)


def _start_run(ctx: RequestContext, project_id: int, target: str | None) -> bool:
    ctx.check_project(project_id)
    try:
        _work(ctx).run_plan(project_id, target)
    except PlanRefused as error:
        raise GraphQLError(str(error), extensions={"code": "PLAN_REFUSED"}) from error
    return True


def resolve_stop_plan(_root: Any, info: GraphQLResolveInfo, projectId: int) -> bool:
    ctx = _ctx(info)
    ctx.check_project(projectId)
    return _work(ctx).stop_plan(projectId)


RESOLVERS: dict[str, Callable[..., Any]] = {
    "Query.projects": resolve_projects,
    "Query.project": resolve_project,
    "Query.planDag": resolve_plan_dag,
    "Query.dataSources": resolve_data_sources,
    "Query.graphs": resolve_graphs,
    "Query.executionEvents": resolve_execution_events,
    "Query.viewerUserId": lambda _root, info: _user(_ctx(info)),
    "Mutation.createProject": resolve_create_project,
    "Mutation.deleteProject": resolve_delete_project,
    "Mutation.addPlanDagNode": resolve_add_node,
    "Mutation.updatePlanDagNode": resolve_update_node,
    "Mutation.deletePlanDagNode": resolve_delete_node,
    "Mutation.addPlanDagEdge": resolve_add_edge,
    "Mutation.deletePlanDagEdge": resolve_delete_edge,
    "Mutation.movePlanDagNode": resolve_move_node,
    "Mutation.batchMovePlanDagNodes": resolve_batch_move,
    "Mutation.updatePlanDagMetadata": resolve_update_plan_metadata,
    "Mutation.joinProjectCollaboration": resolve_join,
    "Mutation.leaveProjectCollaboration": resolve_leave,
    "Mutation.updateUserPresence": resolve_update_presence,
    "Mutation.updateCursorPosition": resolve_update_presence,
    "Mutation.createDataSource": resolve_create_data_source,
    "Mutation.reprocessDataSource": resolve_reprocess_data_source,
    "Mutation.executeNode": resolve_execute_node,
    "Mutation.executePlan": resolve_execute_plan,
    "Mutation.stopPlanExecution": resolve_stop_plan,
    # The subscription's documents are executed against one event at a time, as root.
    "Subscription.nodeExecutionStatusChanged": lambda root, _info, **_args: root,
    "Subscription.planDagChanged": lambda root, _info, **_args: root,
    "Subscription.planDagDeltaChanged": lambda root, _info, **_args: root,
    "Subscription.userPresenceChanged": lambda root, _info, **_args: root,
}
