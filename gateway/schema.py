"""The GraphQL schema (from schema.graphql) with its resolvers attached (gateway/resolvers.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from graphql import GraphQLSchema, build_schema

from gateway.resolvers import LOADGEN_SDL, RESOLVERS

SCHEMA_SDL = (Path(__file__).parent / "schema.graphql").read_text()


def make_schema(
    resolvers: dict[str, Callable[..., Any]] | None = None, *, loadgen: bool = False
) -> GraphQLSchema:
    """The schema with resolvers attached (the loadgen mutations only when asked for)."""
    schema = build_schema(SCHEMA_SDL + (LOADGEN_SDL if loadgen else ""))
    table = {**RESOLVERS, **(resolvers or {})}
    for type_name in ("Query", "Mutation", "Subscription"):
        graphql_type = schema.get_type(type_name)
        for field_name, field_def in graphql_type.fields.items():  # type: ignore[union-attr]
            resolver = table.get(f"{type_name}.{field_name}")
            if resolver is None:  # no silent stub: a field without resolver is a bug
                raise RuntimeError(f"{type_name}.{field_name} has no resolver")
            field_def.resolve = resolver
    return schema
