"""The Strawberry schema: an Apollo Federation v2 subgraph."""

import dataclasses
import datetime
import decimal
from typing import Any, Final

from graphql import GraphQLError
from strawberry.schema.types.base_scalars import DateTimeDefinition, DecimalDefinition
from strawberry.types import ExecutionContext

from gql.engine.inputs import install_input_builders
from gql.engine.internals import graphql_schema_of, input_definitions
from gql.engine.plans import CompiledExecutionContext
from gql.errors import log_unexpected
from gql.schema.federation import SubgraphSchema
from gql.schema.mutations import Mutation
from gql.schema.queries import Query
from gql.schema.subscriptions import Subscription
from gql.schema.types.orders import Order
from gql.schema.types.products import Product
from gql.schema.types.reservations import Reservation
from gql.schema.types.users import User

# The lowest federation version whose directives the schema uses: it imports only `@key`
# (v2.0). A newer link buys nothing and keeps out composers that do not know it yet (The
# Guild's, used by Hive Gateway, refuses v2.11).
FEDERATION_VERSION: Final = "2.0"

# Strawberry's own scalars, with a `@specifiedBy` so that codegen and gateways know what they
# carry (serialization unchanged: the compiled plans call the same functions).
SCALARS: dict[object, Any] = {
    decimal.Decimal: dataclasses.replace(
        DecimalDefinition,
        description='A decimal number as a string, exact (never a float): e.g. "123.45".',
        specified_by_url="https://speleotrove.com/decimal/daconvs.html#reftostr",
    ),
    datetime.datetime: dataclasses.replace(
        DateTimeDefinition,
        description="A date and time with its UTC offset, as an RFC 3339 string.",
        specified_by_url="https://datatracker.ietf.org/doc/html/rfc3339#section-5.6",
    ),
}


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
    built = Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        types=[Product, Order, User, Reservation],
        # Pinned so that a Strawberry upgrade does not change the published SDL by itself.
        federation_version=FEDERATION_VERSION,
        scalar_overrides=SCALARS,
        **overrides,
    )
    # Arguments' input objects built by plans made once (gql/engine/inputs.py).
    install_input_builders(
        input_definitions(graphql_schema_of(built)), built.config.name_converter.from_field
    )
    return built


schema = build_schema()
