"""Plan edits as the collaboration documents need them: who made them, and their patch.

A project has one plan; its plan id is the project's id. Every edit's payload gets the
editor's `userId` and the RFC 6902 JSON Patch that turns the planDag query's shape before
the edit into the shape after it. Array indexes are positions in the planDag order
(nodes by creation, edges by id), read in the transaction that makes the edit, so the
patch is persisted with the edit and every subscriber applies the same operations.
"""

from __future__ import annotations

from typing import Any

from graphql import GraphQLError
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage import queries
from storage.models import Project


def check_plan(project_id: int, plan_id: Any) -> None:
    """planId is accepted when null/absent or equal to the project's id (its one plan)."""
    if plan_id is None:
        return
    try:
        same = int(plan_id) == project_id
    except (TypeError, ValueError):
        same = False
    if not same:
        raise GraphQLError(
            f"planId {plan_id} is not a plan of project {project_id}: a project has one "
            f"plan, whose id is the project's id ({project_id}); pass that or leave planId out",
            extensions={"code": "PLAN_NOT_FOUND"},
        )


def node_index(s: Session, project_id: int, node_id: str) -> int:
    ids = [n.id for n in queries.list_nodes(s, project_id)]
    return ids.index(node_id)


def edge_index(s: Session, project_id: int, edge_id: str) -> int:
    ids = [e.id for e in queries.list_edges(s, project_id)]
    return ids.index(edge_id)


def with_patch(
    change: dict[str, Any], user_id: str | None, patch: list[dict[str, Any]]
) -> dict[str, Any]:
    return {**change, "userId": user_id, "patch": patch}


def lock_plan(s: Session, project_id: int) -> None:
    """Take the project row's lock before a plan edit reads anything (PostgreSQL: SELECT …
    FOR UPDATE; SQLite's write transaction is already exclusive). Edits of one plan are
    then serialized whole, so the array indexes of each edit's patch are read from exactly
    the plan the previous edit left, the same order as their sequences."""
    s.execute(select(Project.id).where(Project.id == project_id).with_for_update())
