"""The Apollo Federation v2 subgraph: its SDL, and `_entities` batched through the loaders and
authorized like every other path."""

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from core.settings import Settings
from gql.app import create_app
from gql.schema.ids import to_global_id
from tests.conftest import EXECUTORS, GraphQL, StatementCounter, error_codes
from tests.documents import ENTITIES
from tests.factories import Factory


@pytest.fixture(params=EXECUTORS)
def executor(request: pytest.FixtureRequest) -> str:
    """Every test of this module that builds the app runs on both executors (the test id
    says which one a statement count measured)."""
    value: str = request.param
    return value


def refs(type_name: str, row_ids: list[int]) -> list[dict[str, Any]]:
    return [{"__typename": type_name, "id": to_global_id(type_name, row_id)} for row_id in row_ids]


async def test_service_sdl_declares_product_order_and_user_as_entities_keyed_by_id(
    gql: GraphQL,
) -> None:
    body = await gql("{ _service { sdl } }")
    sdl = body["data"]["_service"]["sdl"]
    assert 'schema @link(url: "https://specs.apollo.dev/federation/v2.' in sdl
    for type_name in ("Product", "Order", "User"):
        assert f'type {type_name} implements Node @key(fields: "id")' in sdl


async def test_product_entities_batch_into_one_statement_for_100_representations(
    factory: Factory, gql: GraphQL, statements: StatementCounter
) -> None:
    products = await factory.products(100)
    # Out of id order, with a repeat and a missing one: answers follow the representations.
    row_ids = [product.id for product in reversed(products)] + [products[0].id, 10**9]

    statements.reset()
    body = await gql(ENTITIES, {"representations": refs("Product", row_ids)})

    assert "errors" not in body, body
    entities = body["data"]["_entities"]
    assert [entity and entity["name"] for entity in entities] == [
        *(product.name for product in reversed(products)),
        products[0].name,
        None,
    ]
    assert entities[0]["price"] == {"amount": "100.00", "currency": "EUR"}
    assert statements.count == 1, statements.statements


async def test_order_entities_prefetch_items_and_products_in_constant_statements(
    factory: Factory, gql: GraphQL, statements: StatementCounter
) -> None:
    user, token = await factory.user()
    products = await factory.products(10)
    orders = [
        await factory.order(user, [(products[n % 10], 1), (products[(n + 1) % 10], 2)])
        for n in range(100)
    ]

    statements.reset()
    one = await gql(ENTITIES, {"representations": refs("Order", [orders[0].id])}, token=token)
    statements_for_one = statements.count

    statements.reset()
    hundred = await gql(
        ENTITIES, {"representations": refs("Order", [order.id for order in orders])}, token=token
    )
    statements_for_hundred = statements.count

    assert "errors" not in one and "errors" not in hundred, hundred
    entities = hundred["data"]["_entities"]
    assert [entity["id"] for entity in entities] == [to_global_id("Order", o.id) for o in orders]
    assert entities[7]["items"] == [
        {
            "quantity": 1,
            "product": {"id": to_global_id("Product", products[7].id), "name": products[7].name},
        },
        {
            "quantity": 2,
            "product": {"id": to_global_id("Product", products[8].id), "name": products[8].name},
        },
    ]
    # viewer, orders, items, products: one statement per type, however many orders.
    assert statements_for_one == statements_for_hundred == 4, statements.statements


async def test_mixed_entity_types_batch_into_one_statement_per_type(
    factory: Factory, gql: GraphQL, statements: StatementCounter
) -> None:
    _, token = await factory.user(is_admin=True)
    users = [(await factory.user())[0] for _ in range(20)]
    products = await factory.products(20)
    orders = [await factory.order(user, [(products[0], 1)]) for user in users]
    representations = [
        representation
        for n in range(20)
        for representation in (
            *refs("Product", [products[n].id]),
            *refs("User", [users[n].id]),
            *refs("Order", [orders[n].id]),
        )
    ]

    statements.reset()
    body = await gql(ENTITIES, {"representations": representations}, token=token)

    assert "errors" not in body, body
    assert [entity["__typename"] for entity in body["data"]["_entities"]] == 20 * [
        "Product",
        "User",
        "Order",
    ]
    assert body["data"]["_entities"][1]["email"] == users[0].email
    # viewer, products, users, orders, order items (their products are already loaded).
    assert statements.count == 5, statements.statements


async def test_order_entity_is_hidden_from_anonymous_callers_and_other_users(
    factory: Factory, gql: GraphQL
) -> None:
    owner, owner_token = await factory.user()
    _, other_token = await factory.user()
    _, admin_token = await factory.user(is_admin=True)
    order = await factory.order(owner, [(await factory.product(), 1)])
    representations = refs("Order", [order.id])

    anonymous = await gql(ENTITIES, {"representations": representations})
    assert anonymous["data"] is None or anonymous["data"]["_entities"] == [None]
    assert error_codes(anonymous) == ["UNAUTHENTICATED"]

    other = await gql(ENTITIES, {"representations": representations}, token=other_token)
    assert other == {"data": {"_entities": [None]}}

    for token in (owner_token, admin_token):
        body = await gql(ENTITIES, {"representations": representations}, token=token)
        assert body["data"]["_entities"][0]["id"] == to_global_id("Order", order.id)


async def test_user_entity_is_visible_to_the_user_and_admins_only(
    factory: Factory, gql: GraphQL
) -> None:
    user, token = await factory.user()
    other, _ = await factory.user()
    representations = refs("User", [user.id, other.id])

    own = await gql(ENTITIES, {"representations": representations}, token=token)
    assert own["data"]["_entities"] == [
        {"__typename": "User", "id": to_global_id("User", user.id), "email": user.email},
        None,
    ]
    anonymous = await gql(ENTITIES, {"representations": representations})
    assert set(error_codes(anonymous)) == {"UNAUTHENTICATED"}


@pytest.mark.parametrize(
    "representation",
    [
        {"__typename": "Product", "id": "not-base64!"},
        {"__typename": "Product", "id": to_global_id("Order", 1)},
        {"__typename": "Product", "id": to_global_id("Product", 0)},
        {"__typename": "Product", "id": 5},
        {"__typename": "Product"},
        {"__typename": "Product", "id": to_global_id("Product", 1), "sku": "X"},
        {"__typename": "Money", "id": to_global_id("Product", 1)},
        {"__typename": "NoSuchType", "id": to_global_id("Product", 1)},
        {"id": to_global_id("Product", 1)},
        "Product:1",
    ],
)
async def test_malformed_representations_are_bad_user_input_not_internal_errors(
    factory: Factory, gql: GraphQL, representation: object
) -> None:
    product = await factory.product()
    body = await gql(
        ENTITIES, {"representations": [representation, *refs("Product", [product.id])]}
    )
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    assert body["errors"][0]["path"] == ["_entities", 0]
    # The well-formed representation next to it is still resolved.
    assert body["data"]["_entities"][1]["name"] == product.name


@pytest.fixture
async def production_client(database_url: str) -> Any:
    settings = Settings(environment="production", redis_url=None, db_pool_size=2)
    application: FastAPI = create_app(settings, database_url=database_url)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def test_production_disables_introspection_but_still_serves_the_sdl_to_gateways(
    production_client: httpx.AsyncClient,
) -> None:
    introspection = await production_client.post(
        "/graphql", json={"query": "{ __schema { types { name } } }"}
    )
    # Refused in validation: a request error, whose response has no `data` entry at all.
    assert "data" not in introspection.json()
    assert set(error_codes(introspection.json())) == {"GRAPHQL_VALIDATION_FAILED"}
    assert "introspection" in introspection.json()["errors"][0]["message"].lower()

    sdl = await production_client.post("/graphql", json={"query": "{ _service { sdl } }"})
    assert '@key(fields: "id")' in sdl.json()["data"]["_service"]["sdl"]


async def test_production_serves_no_graphiql(production_client: httpx.AsyncClient) -> None:
    page = await production_client.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 404
    asset = await production_client.get("/graphiql-assets/graphiql.min.js")
    assert asset.status_code == 404
