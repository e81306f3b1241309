"""Malformed client input that reaches the database layer is BAD_USER_INPUT, never a masked
500: cursor keys out of range, prices beyond NUMERIC(12,2), NUL characters in text."""

import base64
import json
import logging
from typing import Any

import httpx
import orjson
import pytest
from graphql import GraphQLError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gql.errors import is_expected, is_unavailable, with_code
from gql.schema.ids import to_global_id
from tests.conftest import error_codes
from tests.edge_support import captured_logs
from tests.factories import Factory


def cursor(*parts: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode().rstrip("=")


async def post(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any], token: str | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The body, and the log lines at WARNING or above written while it ran."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with captured_logs(logging.INFO) as logs:
        response = await client.post(
            "/graphql", json={"query": query, "variables": variables}, headers=headers
        )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body, [line for line in logs.lines if line["level"] in ("WARNING", "ERROR")]


ORDERS = "query($after: String) { orders(first: 2, after: $after) { edges { cursor } } }"
RESERVATIONS = (
    "query($after: String) { reservations(first: 2, after: $after) { edges { cursor } } }"
)
PRODUCTS_AFTER = (
    "query($after: String, $order: ProductOrder!) "
    "{ products(first: 2, after: $after, orderBy: $order) { edges { cursor } } }"
)
PRODUCTS_FILTERED = (
    "query($filter: ProductFilter) { products(first: 2, filter: $filter) { edges { cursor } } }"
)


@pytest.mark.parametrize("row_id", [2**63, 2**64 + 5, 0, -1])
@pytest.mark.parametrize("listing", ["orders", "reservations"])
async def test_a_cursor_id_out_of_the_bigint_range_is_bad_user_input(
    client: httpx.AsyncClient, factory: Factory, listing: str, row_id: int
) -> None:
    _, token = await factory.user()
    query = ORDERS if listing == "orders" else RESERVATIONS
    body, problems = await post(client, query, {"after": cursor(listing, row_id)}, token)
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    assert body["errors"][0]["message"] == "malformed cursor"
    assert problems == []


@pytest.mark.parametrize(
    ("order", "value", "row_id"),
    [
        ("PRICE_ASC", "10.00", 2**63),
        ("NAME_ASC", "a", 0),
        ("PRICE_ASC", "1e999999999", 1),
        ("PRICE_DESC", "-1e999999999", 1),
        ("PRICE_ASC", "10000000000", 1),
        ("PRICE_DESC", "9999999999.995", 1),
    ],
)
async def test_a_product_cursor_out_of_range_is_bad_user_input(
    client: httpx.AsyncClient, factory: Factory, order: str, value: str, row_id: int
) -> None:
    await factory.product()
    # Price orderings' positions start with the currency (prices compare only within one).
    key = ("EUR", value) if order.startswith("PRICE") else (value,)
    variables = {"after": cursor(f"products:{order}", *key, row_id), "order": order}
    body, problems = await post(client, PRODUCTS_AFTER, variables)
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    assert body["errors"][0]["message"] == "malformed cursor"
    assert problems == []


async def test_the_largest_valid_cursor_key_is_still_accepted(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    await factory.product()
    variables = {"after": cursor("products:PRICE_DESC", "EUR", "9999999999.99", 2**63 - 1)}
    body, _ = await post(client, PRODUCTS_AFTER, {**variables, "order": "PRICE_DESC"})
    assert "errors" not in body, body
    assert len(body["data"]["products"]["edges"]) == 1


@pytest.mark.parametrize("bound", ["minPrice", "maxPrice"])
@pytest.mark.parametrize("value", ["1e999999999", "10000000000", "1E+10", "9999999999.995"])
async def test_a_price_bound_beyond_the_price_column_is_bad_user_input(
    client: httpx.AsyncClient, factory: Factory, bound: str, value: str
) -> None:
    await factory.product()
    body, problems = await post(
        client, PRODUCTS_FILTERED, {"filter": {"currency": "EUR", bound: value}}
    )
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    assert "price" in body["errors"][0]["message"]
    assert problems == []


async def test_a_price_bound_just_inside_the_range_is_accepted(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    await factory.product()
    body, _ = await post(
        client, PRODUCTS_FILTERED, {"filter": {"currency": "EUR", "maxPrice": "9999999999.994"}}
    )
    assert "errors" not in body, body
    assert len(body["data"]["products"]["edges"]) == 1


async def test_a_nul_character_in_a_name_search_is_bad_user_input(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    await factory.product()
    body, problems = await post(client, PRODUCTS_FILTERED, {"filter": {"nameContains": "a\x00"}})
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    assert "NUL" in body["errors"][0]["message"]
    assert problems == []


CREATE_ORDER = """
mutation($input: CreateOrderInput!) {
  createOrder(input: $input) { __typename ... on CreateOrderSuccess { created } }
}
"""


async def test_a_value_the_database_rejects_is_bad_user_input_logged_as_a_warning(
    client: httpx.AsyncClient, factory: Factory, engine: AsyncEngine
) -> None:
    """The backstop: no check of ours catches a NUL in `idempotencyKey`, PostgreSQL does
    (invalid byte sequence, a class 22 data exception); the client learns its input was
    wrong, operators get one warning without a stack, and nothing was written."""
    _, token = await factory.user()
    product = await factory.product(stock=5)
    items = [{"productId": to_global_id("Product", product.id), "quantity": 2}]
    variables = {"input": {"idempotencyKey": "key-\x00-1", "items": items}}
    body, problems = await post(client, CREATE_ORDER, variables, token)
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    assert body["data"] == {"createOrder": None}
    [error] = body["errors"]
    assert error["message"] == "a value is malformed or out of range"
    for internal in ("asyncpg", "0x00", "UTF8", "Traceback", "INSERT", "SELECT"):
        assert internal not in orjson.dumps(body).decode()
    assert [line["level"] for line in problems] == ["WARNING"], problems
    assert "exception" not in problems[0]
    assert "CharacterNotInRepertoireError" in problems[0]["message"]
    async with engine.connect() as connection:
        stock = await connection.scalar(text(f"SELECT stock FROM products WHERE id = {product.id}"))
        orders = await connection.scalar(text("SELECT count(*) FROM orders"))
    assert (stock, orders) == (5, 0)

    variables = {"input": {"idempotencyKey": "key-1", "items": items}}
    retried, _ = await post(client, CREATE_ORDER, variables, token)
    assert retried["data"]["createOrder"] == {"__typename": "CreateOrderSuccess", "created": True}


@pytest.mark.parametrize(
    ("statement", "value"),
    [
        # Refused by the driver while encoding (asyncpg's DataError, an InterfaceError that
        # SQLAlchemy wraps as its InterfaceError, which otherwise reads as "unavailable").
        ("SELECT CAST(:v AS bigint)", 2**63),
        # Refused by PostgreSQL: class 22, invalid byte sequence.
        ("SELECT CAST(:v AS text)", "a\x00b"),
        # Refused by PostgreSQL: class 22, numeric field overflow.
        ("SELECT CAST(CAST(:v AS numeric) AS numeric(12, 2))", "1e20"),
    ],
    ids=["driver-int64", "server-nul", "server-numeric-overflow"],
)
async def test_values_the_driver_or_database_reject_map_to_bad_user_input(
    engine: AsyncEngine, statement: str, value: object
) -> None:
    async with engine.connect() as connection:
        with pytest.raises(Exception) as caught:
            await connection.execute(text(statement), {"v": value})
    error = GraphQLError("failed", original_error=caught.value)
    assert is_expected(error)
    assert not is_unavailable(caught.value)
    shown = with_code(error)
    assert shown.extensions is not None
    assert (shown.message, shown.extensions["code"]) == (
        "a value is malformed or out of range",
        "BAD_USER_INPUT",
    )
