"""The load generator's GraphQL mutations (`serve --enable-loadgen`): prepareLoad, startLoad.

Benchmark code, like the generator itself (bench/loadgen.py): gateway/app.py imports this
module only when load generation is enabled, so a production server has neither the
mutations nor the code behind them.
"""

from __future__ import annotations

from typing import Any

from graphql import GraphQLError, GraphQLResolveInfo

from actors.bus import Bus
from actors.state import StateStore
from bench.loadgen import LoadGenerator
from gateway.schema import SchemaExtension
from gateway.services import RequestContext

LOADGEN_SDL = """
extend type Mutation {
  "Load testing (serve --enable-loadgen): projects 1..projects, each with a data source."
  prepareLoad(projects: Int!): Boolean!
  "Load testing: drive those data sources through real state changes; returns at once."
  startLoad(projects: Int!, eventsPerSecond: Int!, seconds: Float!): Boolean!
}
"""


def load_generation(store: StateStore, bus: Bus) -> tuple[LoadGenerator, SchemaExtension]:
    """A load generator writing through `store` and `bus`, and the mutations that drive it."""
    generator = LoadGenerator(store, bus)
    return generator, loadgen_extension(generator)


def loadgen_extension(generator: LoadGenerator) -> SchemaExtension:
    """prepareLoad and startLoad, driving `generator` (admin tokens only)."""

    def check_admin(info: GraphQLResolveInfo) -> None:
        context: RequestContext = info.context
        if not context.admin:
            raise GraphQLError(
                "load generation needs an admin token (run.py token create --admin)",
                extensions={"code": "FORBIDDEN"},
            )

    def resolve_prepare_load(_root: Any, info: GraphQLResolveInfo, projects: int) -> bool:
        check_admin(info)
        try:
            generator.prepare(projects)
        except ValueError as error:
            raise GraphQLError(str(error), extensions={"code": "BAD_USER_INPUT"}) from error
        return True

    def resolve_start_load(
        _root: Any, info: GraphQLResolveInfo, projects: int, eventsPerSecond: int, seconds: float
    ) -> bool:
        check_admin(info)
        try:
            generator.start(projects, eventsPerSecond, seconds)
        except ValueError as error:
            raise GraphQLError(str(error), extensions={"code": "BAD_USER_INPUT"}) from error
        return True

    return SchemaExtension(
        LOADGEN_SDL,
        {"Mutation.prepareLoad": resolve_prepare_load, "Mutation.startLoad": resolve_start_load},
    )
