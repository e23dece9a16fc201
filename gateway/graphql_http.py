"""GraphQL over HTTP (the GraphQL-over-HTTP specification): one request, one result.

Pure functions from a parsed HTTP request to (status, headers, body), so that gateway/http.py
only moves bytes. Queries and mutations by POST (application/json body), queries by GET
(query string); a mutation over GET is refused with 405, as the spec requires. Media type of
the answer follows Accept: `application/graphql-response+json` (the spec's status codes:
400 for a request that cannot be parsed or validated) or `application/json` (200 with
`errors` for anything that reached GraphQL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import orjson
from graphql import ExecutionResult, GraphQLError, GraphQLSchema, OperationType, execute

from gateway.errors import public_errors
from gateway.operations import DocumentCache, error_dict, operation_of
from gateway.services import RequestContext

GRAPHQL_RESPONSE = "application/graphql-response+json"
JSON = "application/json"


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    body: bytes
    content_type: str = JSON
    extra_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class GraphQLParams:
    query: str
    variables: dict[str, Any] | None
    operation_name: str | None


def answer_type(accept: str | None) -> str | None:
    """The media type to answer with, or None when Accept names neither (406).

    No Accept header at all means application/json (the spec: legacy clients)."""
    if not accept:
        return JSON
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media == GRAPHQL_RESPONSE:
            return GRAPHQL_RESPONSE
        if media in (JSON, "application/*", "*/*"):
            return JSON
    return None


def _errors(status: int, media: str, message: str, **extra: Any) -> HttpAnswer:
    body = orjson.dumps({"errors": [{"message": message, **extra}]})
    return HttpAnswer(status, body, media)


def params_from_get(query_string: str, media: str) -> GraphQLParams | HttpAnswer:
    values = parse_qs(query_string, keep_blank_values=True)
    raw = {k: v[-1] for k, v in values.items()}
    variables: Any = None
    if raw.get("variables"):
        try:
            variables = orjson.loads(raw["variables"])
        except orjson.JSONDecodeError:
            return _errors(400, media, "the `variables` parameter is not JSON")
    return _params({**raw, "variables": variables}, media)


def params_from_post(
    content_type: str | None, body: bytes, media: str
) -> GraphQLParams | HttpAnswer:
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind != JSON:
        return _errors(
            415,
            media,
            f"POST /graphql takes Content-Type: application/json, not {content_type or 'none'}",
        )
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        return _errors(400, media, f"the request body is not JSON: {error}")
    if not isinstance(data, dict):
        return _errors(400, media, "the request body must be a JSON object with a `query`")
    return _params(data, media)


def _params(data: dict[str, Any], media: str) -> GraphQLParams | HttpAnswer:
    query = data.get("query")
    if not isinstance(query, str) or not query:
        return _errors(400, media, "the request has no `query` string")
    variables = data.get("variables")
    if variables is not None and not isinstance(variables, dict):
        return _errors(400, media, "`variables` must be a JSON object (or null)")
    name = data.get("operationName")
    if name is not None and not isinstance(name, str):
        return _errors(400, media, "`operationName` must be a string (or null)")
    extensions = data.get("extensions")
    if extensions is not None and not isinstance(extensions, dict):
        return _errors(400, media, "`extensions` must be a JSON object (or null)")
    return GraphQLParams(query, variables, name)


def prepare(
    documents: DocumentCache, params: GraphQLParams, method: str, media: str
) -> tuple[Any, Any] | HttpAnswer:
    """The (document, operation) to run, or the answer refusing it."""
    prepared = documents.get(params.query)
    bad = 400 if media == GRAPHQL_RESPONSE else 200
    if prepared.document is None:
        return HttpAnswer(bad, orjson.dumps({"errors": list(prepared.errors)}), media)
    try:
        operation = operation_of(prepared.document, params.operation_name)
    except GraphQLError as error:
        return HttpAnswer(bad, orjson.dumps({"errors": [error_dict(error)]}), media)
    if method == "GET" and operation.operation != OperationType.QUERY:
        return HttpAnswer(
            405,
            orjson.dumps(
                {
                    "errors": [
                        {"message": f"a {operation.operation.value} over GET: send it by POST"}
                    ]
                }
            ),
            media,
            (("Allow", "POST"),),
        )
    if operation.operation == OperationType.SUBSCRIPTION:
        return _errors(
            400 if media == GRAPHQL_RESPONSE else 200,
            media,
            "a subscription needs a stream: send it with Accept: text/event-stream "
            "(graphql-sse) or over the WebSocket at /graphql",
        )
    return prepared.document, operation


def run(
    schema: GraphQLSchema, document: Any, params: GraphQLParams, context: RequestContext, media: str
) -> HttpAnswer:
    """Execute on a worker thread (it reads and writes the database)."""
    result = execute(
        schema,
        document,
        context_value=context,
        variable_values=params.variables,
        operation_name=params.operation_name,
    )
    assert isinstance(result, ExecutionResult)
    result = public_errors(result)  # no SQL or bug text to the client: an id to report
    status = 200
    if result.data is None and result.errors and media == GRAPHQL_RESPONSE:
        # Variable coercion failed (the request never executed): the spec's 400.
        status = 400
    return HttpAnswer(status, orjson.dumps(result.formatted), media)
