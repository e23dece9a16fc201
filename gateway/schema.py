"""The GraphQL schema (from schema.graphql) with its resolvers attached (gateway/resolvers.py).

A `SchemaExtension` adds fields that only some servers have (the load generator's
mutations, bench/loadgen_schema.py, with `serve --enable-loadgen`): production code names
no such field.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphql import GraphQLSchema, build_schema

from gateway.resolvers import RESOLVERS

SCHEMA_SDL = (Path(__file__).parent / "schema.graphql").read_text()


@dataclass(frozen=True)
class SchemaExtension:
    """SDL that extends the schema's types (`extend type Mutation { … }`) and the
    resolvers of the fields it adds, keyed "Type.field" like RESOLVERS."""

    sdl: str
    resolvers: dict[str, Callable[..., Any]] = field(default_factory=dict)


def make_schema(
    resolvers: dict[str, Callable[..., Any]] | None = None,
    *,
    extensions: Sequence[SchemaExtension] = (),
) -> GraphQLSchema:
    """The schema with resolvers attached: RESOLVERS, the extensions', then `resolvers`
    (which replace any of them: tests)."""
    schema = build_schema(SCHEMA_SDL + "".join(extension.sdl for extension in extensions))
    table = dict(RESOLVERS)
    for extension in extensions:
        table.update(extension.resolvers)
    table.update(resolvers or {})
    for type_name in ("Query", "Mutation", "Subscription"):
        graphql_type = schema.get_type(type_name)
        for field_name, field_def in graphql_type.fields.items():  # type: ignore[union-attr]
            resolver = table.get(f"{type_name}.{field_name}")
            if resolver is None:  # no silent stub: a field without resolver is a bug
                raise RuntimeError(f"{type_name}.{field_name} has no resolver")
            field_def.resolve = resolver
    return schema
