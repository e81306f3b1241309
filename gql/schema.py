"""The Strawberry schema (an Apollo Federation v2 subgraph) with its execution extensions."""

from typing import Any

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


def build_schema(*, introspection: bool = True, **overrides: Any) -> Schema:
    overrides.setdefault("execution_context_class", CompiledExecutionContext)
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
