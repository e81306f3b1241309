"""The Strawberry schema (an Apollo Federation v2 subgraph) with its execution extensions."""

from typing import Any, Literal

from graphql import GraphQLError
from strawberry.extensions import DisableIntrospection, ParserCache, ValidationCache
from strawberry.types import ExecutionContext

from gql.errors import log_unexpected
from gql.execution import CompiledExecutionContext
from gql.extensions import EdgeExtension
from gql.federation import SubgraphSchema
from gql.mutations import Mutation
from gql.queries import Query
from gql.types.orders import Order
from gql.types.products import Product
from gql.types.reservations import Reservation
from gql.types.users import User


class Schema(SubgraphSchema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # Expected errors (bad input, auth) are the client's business; only the unexpected
        # ones are logged, once, with their stack.
        log_unexpected(errors)


# The execution context class of each EXECUTOR: None is Strawberry's default, graphql-core's
# reference executor.
EXECUTION_CONTEXTS: dict[str, type[CompiledExecutionContext] | None] = {
    "compiled": CompiledExecutionContext,
    "reference": None,
}


def build_schema(
    *,
    introspection: bool = True,
    executor: Literal["compiled", "reference"] = "compiled",
    **overrides: Any,
) -> Schema:
    """The schema, completing objects with `executor` (the EXECUTOR setting, docs/execution.md)
    unless `execution_context_class` is given."""
    overrides.setdefault("execution_context_class", EXECUTION_CONTEXTS[executor])
    return Schema(
        query=Query,
        mutation=Mutation,
        types=[Product, Order, User, Reservation],
        extensions=[
            # Before the caches: sets the parser's token limit and adds the depth, alias and
            # cost rule to validation (both cached with them); times the operation.
            EdgeExtension,
            # Both caches live at module level, shared by every request of the process.
            lambda: ParserCache(maxsize=1000),
            lambda: ValidationCache(maxsize=1000),
            # Without introspection, gateways still read the SDL through `_service { sdl }`.
            *([] if introspection else [DisableIntrospection]),
        ],
        # Pinned so that a Strawberry upgrade does not change the published SDL by itself.
        federation_version="2.11",
        **overrides,
    )


schema = build_schema()
