"""The Strawberry schema: an Apollo Federation v2 subgraph."""

from typing import Any

from graphql import GraphQLError
from strawberry.types import ExecutionContext

from gql.engine.plans import CompiledExecutionContext
from gql.errors import log_unexpected
from gql.schema.federation import SubgraphSchema
from gql.schema.mutations import Mutation
from gql.schema.queries import Query
from gql.schema.types.orders import Order
from gql.schema.types.products import Product
from gql.schema.types.reservations import Reservation
from gql.schema.types.users import User


class Schema(SubgraphSchema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # Expected errors (bad input, auth) are the client's business; only the unexpected
        # ones are logged, once, with their stack.
        log_unexpected(errors)


def build_schema(**overrides: Any) -> Schema:
    """The schema. `schema.execute` (tools, tests) completes objects with the compiled plans
    unless `execution_context_class` says otherwise; served requests go through the pipeline
    (gql.transport.endpoint), which parses, validates and executes with the executor the
    settings chose."""
    overrides.setdefault("execution_context_class", CompiledExecutionContext)
    return Schema(
        query=Query,
        mutation=Mutation,
        types=[Product, Order, User, Reservation],
        # Pinned so that a Strawberry upgrade does not change the published SDL by itself.
        federation_version="2.11",
        **overrides,
    )


schema = build_schema()
