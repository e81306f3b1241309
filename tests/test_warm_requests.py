"""A document the endpoint already knows (parsed and validated for an earlier request, by
another viewer with other variables) is answered exactly as on its first sighting: same
status, media type and body, errors and codes included."""

from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gql.schema.ids import to_global_id
from tests.edge_support import app_client
from tests.factories import Factory

ORDER_HISTORY = """query History($first: Int) {
  me { name }
  orders(first: $first) {
    edges { cursor node { id status createdAt total { amount currency }
      items { quantity unitPrice { amount currency } product { id name kind } } } }
    pageInfo { hasNextPage endCursor }
  }
}"""
PRODUCTS = "query Page($first: Int) { products(first: $first) { edges { node { id name } } } }"
NEW_JSON = "application/graphql-response+json"
JSON = {"Content-Type": "application/json"}


async def _post(
    client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str]
) -> httpx.Response:
    return await client.post("/graphql", json=body, headers=headers)


def _without_correlation_ids(body: Any) -> Any:
    if isinstance(body, dict):
        return {k: _without_correlation_ids(v) for k, v in body.items() if k != "correlationId"}
    if isinstance(body, list):
        return [_without_correlation_ids(v) for v in body]
    return body


async def _cold_and_warm(
    database_url: str, prime: dict[str, Any], body: dict[str, Any], headers: dict[str, str]
) -> tuple[httpx.Response, httpx.Response]:
    """`body` answered by a fresh app's cold path, then by another app, warm (primed with
    `prime`: the same operation as a user whose variables and token let it run)."""
    async with app_client(database_url) as (_, client):
        cold = await _post(client, body, headers)
    async with app_client(database_url) as (app, client):
        primed = await _post(client, prime, {"Authorization": prime.pop("authorization")})
        assert primed.json().get("data") is not None, primed.text
        assert app.state.documents.parsed(body["query"]).validation_errors == ()
        warm = await _post(client, body, headers)
    return cold, warm


@pytest.mark.parametrize(
    ("case", "query", "prime_variables", "variables", "headers"),
    [
        ("an order history", ORDER_HISTORY, {"first": 5}, {"first": 5}, {}),
        ("the new media type", ORDER_HISTORY, {"first": 5}, {"first": 2}, {"Accept": NEW_JSON}),
        ("a page too large", PRODUCTS, {"first": 1}, {"first": 1000}, {}),
        ("a variable of the wrong type", PRODUCTS, {"first": 1}, {"first": "two"}, {}),
        ("a bad token", ORDER_HISTORY, {"first": 1}, {"first": 1}, {"token": "bk_wrong"}),
    ],
)
async def test_a_known_document_answers_as_on_its_first_sighting(  # noqa: PLR0917
    database_url: str,
    factory: Factory,
    case: str,
    query: str,
    prime_variables: dict[str, Any],
    variables: dict[str, Any],
    headers: dict[str, str],
) -> None:
    user, token = await factory.user()
    products = await factory.products(3)
    for n in range(4):
        await factory.order(user, [(products[n % 3], 1 + n), (products[(n + 1) % 3], 2)])
    headers = dict(headers)
    headers["Authorization"] = f"Bearer {headers.pop('token', token)}"
    cold, warm = await _cold_and_warm(
        database_url,
        {"query": query, "variables": prime_variables, "authorization": f"Bearer {token}"},
        {"query": query, "variables": variables},
        headers,
    )
    assert warm.status_code == cold.status_code, case
    assert warm.headers["content-type"] == cold.headers["content-type"], case
    assert _without_correlation_ids(warm.json()) == _without_correlation_ids(cold.json()), case
    for error in warm.json().get("errors", []):
        assert error["extensions"]["correlationId"] == warm.headers["x-correlation-id"]


async def test_a_warm_order_history_is_the_viewers_own(database_url: str, factory: Factory) -> None:
    (alice, alice_token), (bob, bob_token) = await factory.user(), await factory.user()
    [product] = await factory.products(1)
    alices = await factory.order(alice, [(product, 1)])
    bobs = await factory.order(bob, [(product, 2)])
    body = {"query": ORDER_HISTORY, "variables": {"first": 10}}
    async with app_client(database_url) as (_, client):
        await _post(client, body, {"Authorization": f"Bearer {alice_token}"})
        as_bob = await _post(client, body, {"Authorization": f"Bearer {bob_token}"})
    edges = as_bob.json()["data"]["orders"]["edges"]
    assert [edge["node"]["id"] for edge in edges] == [to_global_id("Order", bobs.id)]
    assert to_global_id("Order", alices.id) not in as_bob.text


async def test_a_warm_mutation_commits(
    database_url: str, factory: Factory, engine: AsyncEngine
) -> None:
    _, token = await factory.user()
    product = await factory.product(stock=10)
    mutation = """mutation Create($input: CreateOrderInput!) {
      createOrder(input: $input) { __typename ... on CreateOrderSuccess { order { id } } }
    }"""
    headers = {"Authorization": f"Bearer {token}"}

    def body(key: str, quantity: int) -> dict[str, Any]:
        items = [{"productId": to_global_id("Product", product.id), "quantity": quantity}]
        return {"query": mutation, "variables": {"input": {"idempotencyKey": key, "items": items}}}

    async with app_client(database_url) as (app, client):
        first = await _post(client, body("a", 1), headers)
        assert app.state.documents.parsed(mutation).validation_errors == ()
        second = await _post(client, body("b", 3), headers)
        replayed = await _post(client, body("b", 3), headers)  # same key: the same order
    kinds = [r.json()["data"]["createOrder"]["__typename"] for r in (first, second, replayed)]
    assert kinds == ["CreateOrderSuccess"] * 3
    assert replayed.json() == second.json()
    async with engine.connect() as connection:
        stock = await connection.scalar(text(f"SELECT stock FROM products WHERE id = {product.id}"))
    assert stock == 10 - 1 - 3


@pytest.mark.parametrize(
    "body",
    [
        b'{"query": "{ __typename }"',  # not JSON
        b'[{"query": "{ __typename }"}]',  # a batch
        b'{"query": "{ __typename }", "variables": [1]}',
    ],
)
async def test_bodies_that_are_not_requests_get_the_same_answer_warm_or_cold(
    database_url: str, body: bytes
) -> None:
    async with app_client(database_url) as (_, client):
        await _post(client, {"query": "{ __typename }"}, {})  # prepared from now on
        answers = [await client.post("/graphql", content=body, headers=JSON) for _ in range(2)]
    async with app_client(database_url) as (_, client):
        fresh = await client.post("/graphql", content=body, headers=JSON)
    for answer in answers:
        assert answer.status_code == fresh.status_code
        assert _without_correlation_ids(answer.json()) == _without_correlation_ids(fresh.json())
