"""Parsing, validating and preparing GraphQL operations, once per distinct document.

A load of 1,000 subscribers sends the same document 1,000 times: it is parsed and validated
once (an LRU cache keyed by its text), and subscribers with the same document and variables
share one `SubscriptionSelection`, so each event is executed and serialised once for all.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson
from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    execute,
    get_operation_ast,
    parse,
    validate,
)
from graphql.execution.values import get_argument_values, get_variable_values

from gateway.plan_edits import check_plan
from gateway.projection import compile_projection


def error_dict(error: GraphQLError) -> dict[str, Any]:
    return error.formatted  # message, locations, path, extensions: the spec's shape


@dataclass(frozen=True, slots=True)
class PreparedDocument:
    document: DocumentNode | None
    errors: tuple[dict[str, Any], ...] = ()


class DocumentCache:
    """Parsed and validated documents by their text (bounded, thread-safe)."""

    def __init__(self, schema: GraphQLSchema, size: int = 512, max_depth: int = 10) -> None:
        self.schema = schema
        self.size = size
        self.max_depth = max_depth
        self._cache: OrderedDict[str, PreparedDocument] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, query: str) -> PreparedDocument:
        with self._lock:
            prepared = self._cache.get(query)
            if prepared is not None:
                self._cache.move_to_end(query)
                return prepared
        prepared = self._prepare(query)
        with self._lock:
            self._cache[query] = prepared
            if len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return prepared

    def _prepare(self, query: str) -> PreparedDocument:
        try:
            document = parse(query)
        except GraphQLError as error:
            return PreparedDocument(None, (error_dict(error),))
        errors = validate(self.schema, document)
        if errors:
            return PreparedDocument(None, tuple(error_dict(e) for e in errors))
        depth = document_depth(document)
        if depth > self.max_depth:
            return PreparedDocument(
                None,
                (
                    {
                        "message": f"query depth {depth} exceeds the limit of "
                        f"{self.max_depth}: ask for fewer nested fields",
                        "extensions": {"code": "QUERY_TOO_DEEP", "limit": self.max_depth},
                    },
                ),
            )
        return PreparedDocument(document)


def document_depth(document: DocumentNode) -> int:
    """The deepest field nesting of any operation (fragments followed, cycles are invalid
    and refused by validation before this runs)."""
    fragments = {d.name.value: d for d in document.definitions if d.kind == "fragment_definition"}

    def depth(selection_set: Any, seen: frozenset[str]) -> int:
        if selection_set is None:
            return 0
        best = 0
        for sel in selection_set.selections:
            if sel.kind == "field":
                best = max(best, 1 + depth(sel.selection_set, seen))
            elif sel.kind == "inline_fragment":
                best = max(best, depth(sel.selection_set, seen))
            elif sel.kind == "fragment_spread":
                name = sel.name.value
                if name in fragments and name not in seen:
                    best = max(best, depth(fragments[name].selection_set, seen | {name}))
        return best

    return max(
        (
            depth(d.selection_set, frozenset())
            for d in document.definitions
            if isinstance(d, OperationDefinitionNode)
        ),
        default=0,
    )


# The subscription fields, and the stream of the project actor each one is fed from.
STREAMS = {
    "nodeExecutionStatusChanged": "status",
    "planDagChanged": "plan",
    "planDagDeltaChanged": "delta",
    "userPresenceChanged": "presence",
}


@dataclass(frozen=True, slots=True)
class SubscriptionRequest:
    """What a subscribe message asks for, with its arguments coerced."""

    project_id: int
    after_sequence: int | None
    snapshot: bool
    stream: str = "status"


def operation_of(document: DocumentNode, operation_name: str | None) -> OperationDefinitionNode:
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        if operation_name:
            raise GraphQLError(f"Unknown operation named '{operation_name}'.")
        raise GraphQLError("Must provide operation name if query contains multiple operations.")
    return operation


def root_field(operation: OperationDefinitionNode) -> str | None:
    field_node = operation.selection_set.selections[0]
    return field_node.name.value if isinstance(field_node, FieldNode) else None


def subscription_request(
    schema: GraphQLSchema,
    operation: OperationDefinitionNode,
    variables: dict[str, Any] | None,
) -> SubscriptionRequest:
    """Coerce the variables and read the arguments of the one subscription field."""
    coerced = get_variable_values(schema, operation.variable_definitions or (), variables or {})
    if isinstance(coerced, list):
        raise coerced[0]
    field_node = operation.selection_set.selections[0]
    name = field_node.name.value if isinstance(field_node, FieldNode) else None
    if name not in STREAMS:
        raise GraphQLError(
            "subscriptions must select one of "
            + ", ".join(STREAMS)
            + " directly (not through a fragment)"
        )
    assert isinstance(field_node, FieldNode)
    field_def = schema.subscription_type.fields[name]  # type: ignore[union-attr]
    args = get_argument_values(field_def, field_node, coerced)
    if name == "userPresenceChanged":
        try:
            project_id = int(args["planId"])
        except ValueError:
            raise GraphQLError(
                f"planId {args['planId']!r} is not a plan id: a plan's id is its project's "
                "id (a number)",
                extensions={"code": "PLAN_NOT_FOUND"},
            ) from None
    else:
        project_id = args["projectId"]
        check_plan(project_id, args.get("planId"))
    return SubscriptionRequest(
        project_id=project_id,
        after_sequence=args.get("afterSequence"),
        snapshot=bool(args.get("snapshot")),
        stream=STREAMS[name],
    )


def selection_key(
    query: str, operation_name: str | None, variables: dict[str, Any] | None
) -> tuple[str, str | None, str]:
    """What makes two subscriptions render alike. Variables as a str: orjson's bytes keep
    a 4 KiB buffer each, which a long-lived key would hold per subscription."""
    return query, operation_name, orjson.dumps(variables, option=orjson.OPT_SORT_KEYS).decode()


class SelectionCache:
    """One SubscriptionSelection per distinct (document, variables), shared by every
    subscription that asks the same (bounded; used on the event loop only).

    A thousand watchers of one project then hold one compiled projection and one copy of
    the query text between them, not one each."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._cache: OrderedDict[tuple[str, str | None, str], SubscriptionSelection] = OrderedDict()

    def get(
        self,
        schema: GraphQLSchema,
        query: str,
        document: DocumentNode,
        variables: dict[str, Any] | None,
        operation_name: str | None,
    ) -> SubscriptionSelection:
        key = selection_key(query, operation_name, variables)
        selection = self._cache.get(key)
        if selection is not None:
            self._cache.move_to_end(key)
            return selection
        selection = SubscriptionSelection(schema, query, document, variables, operation_name)
        self._cache[key] = selection
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return selection

    def __len__(self) -> int:
        return len(self._cache)


class SubscriptionSelection:
    """One distinct (document, variables): renders an event to its `next` payload bytes.

    Compiled once into a projection of the event dict (gateway/projection.py) when the
    document allows it, else executed with graphql-core's plain `execute` on the event as
    root value. Either way no per-subscriber state lives between events, so memory stays
    flat however long the stream.
    """

    __slots__ = (
        "key",
        "schema",
        "document",
        "variables",
        "operation_name",
        "stream",
        "_projection",
    )

    def __init__(
        self,
        schema: GraphQLSchema,
        query: str,
        document: DocumentNode,
        variables: dict[str, Any] | None,
        operation_name: str | None,
    ) -> None:
        self.key = selection_key(query, operation_name, variables)
        self.schema = schema
        self.document = document
        self.variables = variables
        self.operation_name = operation_name
        operation = get_operation_ast(document, operation_name)
        # Which of the project actor's streams feeds it (status, plan, delta, presence).
        self.stream = STREAMS.get((operation and root_field(operation)) or "", "status")
        self._projection = (
            compile_projection(schema, document, operation, variables) if operation else None
        )

    def render(self, event: dict[str, Any]) -> bytes:
        if self._projection is not None:
            return orjson.dumps({"data": self._projection(event)})
        return self.execute(event)

    def execute(self, event: dict[str, Any]) -> bytes:
        """The reference path: graphql-core's executor (also what the projection is
        tested against)."""
        result = execute(
            self.schema,
            self.document,
            root_value=event,
            variable_values=self.variables,
            operation_name=self.operation_name,
        )
        assert isinstance(result, ExecutionResult)  # every resolver here is synchronous
        return orjson.dumps(result.formatted)
