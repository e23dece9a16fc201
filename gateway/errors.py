"""Unexpected errors reach people as a sentence with an id, never as SQL text.

graphql-core turns any exception a resolver raises into an error whose message is
`str(exception)`: for a database error that is the SQL statement and its parameters. Errors
meant for people are GraphQLErrors, or a NotFound/ValueError/PermissionError whose message
was written for them; anything else is replaced by a generic message carrying an id, and
logged here with that id and its traceback, so that an operator can find it.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from graphql import ExecutionResult, GraphQLError

from storage.retry import is_transient

log = logging.getLogger(__name__)

# Exceptions whose message is written for the client (storage.queries.NotFound is a
# LookupError; PlanRefused and the input checks are ValueErrors).
FOR_PEOPLE = (LookupError, ValueError, PermissionError)


def internal_error(error: BaseException, where: str) -> dict[str, Any]:
    """Log an unexpected error under a new id; the GraphQL error the client gets."""
    error_id = uuid.uuid4().hex[:12]
    log.error("internal error %s in %s: %s", error_id, where, type(error).__name__, exc_info=error)
    if is_transient(error):
        return {
            "message": (
                f"the database is unavailable right now (id {error_id}): the request was "
                "not done; try again in a moment"
            ),
            "extensions": {"code": "DATABASE_UNAVAILABLE", "errorId": error_id},
        }
    return {
        "message": (
            f"internal server error (id {error_id}): the request could not be completed; "
            "try again, and if it persists, give this id to the operator"
        ),
        "extensions": {"code": "INTERNAL_SERVER_ERROR", "errorId": error_id},
    }


def public_errors(result: ExecutionResult) -> ExecutionResult:
    """The result with every unexpected resolver error replaced (see the module doc)."""
    if not result.errors:
        return result
    errors = []
    changed = False
    for error in result.errors:
        original = error.original_error
        if original is None or isinstance(original, (GraphQLError, *FOR_PEOPLE)):
            errors.append(error)
            continue
        changed = True
        where = ".".join(str(p) for p in error.path or ()) or "an operation"
        public = internal_error(original, where)
        errors.append(
            GraphQLError(
                public["message"],
                nodes=error.nodes,
                source=error.source,
                positions=error.positions,
                path=error.path,
                extensions=public["extensions"],
            )
        )
    if not changed:
        return result
    return ExecutionResult(result.data, errors, extensions=result.extensions)
