"""The Strawberry schema with its execution extensions."""

from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import ParserCache, ValidationCache
from strawberry.types import ExecutionContext

from gql.errors import log_unexpected
from gql.mutations import Mutation
from gql.queries import Query
from gql.types.orders import Order
from gql.types.products import Product
from gql.types.reservations import Reservation
from gql.types.users import User


class Schema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # Expected errors (bad input, auth) are the client's business; only the unexpected
        # ones are logged, once, with their stack.
        log_unexpected(errors)


def build_schema(**overrides: Any) -> Schema:
    return Schema(
        query=Query,
        mutation=Mutation,
        types=[Product, Order, User, Reservation],
        extensions=[
            # Both caches live at module level, shared by every request of the process.
            lambda: ParserCache(maxsize=1000),
            lambda: ValidationCache(maxsize=1000),
        ],
        **overrides,
    )


schema = build_schema()
