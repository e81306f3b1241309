"""This service composed into a supergraph by a real Apollo Gateway (tests/gateway, pinned npm
packages) with a tiny `reviews` subgraph that extends Product and points at Orders."""

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.settings import Settings
from db.engine import create_db_engine, create_session_factory
from db.models import Order, Product, User
from gql.app import create_app
from gql.schema.ids import to_global_id
from tests.conftest import error_codes
from tests.databases import DatabaseFactory
from tests.factories import Factory
from tests.identity_provider import AUDIENCE, ISSUER, IdentityProvider
from tests.live import node_program, npm_ci, require_node, serving

GATEWAY_DIR = Path(__file__).resolve().parent / "gateway"


@pytest.fixture(scope="session")
def gateway_packages() -> Path:
    require_node()
    npm_ci(GATEWAY_DIR)
    return GATEWAY_DIR


@dataclass
class Supergraph:
    url: str
    products: list[Product]
    owner: User
    owner_token: str
    other_token: str
    order: Order
    provider: IdentityProvider  # signs the JWTs the booking subgraph accepts
    owner_subject: str

    async def query(
        self, query: str, *, token: str | None = None, status: int | None = 200
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(self.url, json={"query": query}, headers=headers)
        assert status is None or response.status_code == status, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture(scope="module")
async def supergraph(
    gateway_packages: Path, databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Supergraph]:
    """One supergraph for the module (starting Node programs takes seconds), over a database
    of its own that the tests only read."""
    database_url = await databases.create()
    provider = IdentityProvider()
    settings = Settings(
        environment="test",
        redis_url=None,
        db_pool_size=5,
        jwt_jwks_url=provider.write_jwks(tmp_path_factory.mktemp("idp") / "jwks.json"),
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
    )
    engine = create_db_engine(database_url, settings)
    try:
        async for supergraph in _supergraph(
            gateway_packages,
            database_url,
            settings,
            Factory(create_session_factory(engine)),
            tmp_path_factory.mktemp("supergraph"),
            provider=provider,
        ):
            yield supergraph
    finally:
        await engine.dispose()
        await databases.drop(database_url)


async def _supergraph(
    gateway_packages: Path,
    database_url: str,
    settings: Settings,
    factory: Factory,
    logs: Path,
    *,
    provider: IdentityProvider,
) -> AsyncIterator[Supergraph]:
    products = [
        await factory.product(name="Harbour View Room", price="120.00"),
        await factory.product(name="Old Town Walking Tour", price="25.50"),
    ]
    owner_subject = "auth0|gateway-owner"
    owner, owner_token = await factory.user(subject=owner_subject)
    _, other_token = await factory.user()
    order = await factory.order(owner, [(products[0], 2)])
    product_ids = [to_global_id("Product", product.id) for product in products]
    reviews = [
        {"productId": product_ids[0], "body": "Woke up to the ferries", "rating": 5},
        {"productId": product_ids[0], "body": "Small but spotless", "rating": 4},
        {
            "productId": product_ids[0],
            "orderId": to_global_id("Order", order.id),
            "body": "Booked for our anniversary",
            "rating": 5,
        },
    ]
    async with (
        serving(create_app(settings, database_url=database_url)) as booking_url,
        node_program(
            gateway_packages / "reviews.mjs",
            env={"REVIEWS": json.dumps(reviews)},
            log_dir=logs,
        ) as reviews_subgraph,
    ):
        subgraphs = [
            {"name": "booking", "url": f"{booking_url}/graphql"},
            {"name": "reviews", "url": reviews_subgraph.url},
        ]
        async with node_program(
            gateway_packages / "gateway.mjs",
            env={"SUBGRAPHS": json.dumps(subgraphs)},
            log_dir=logs,
        ) as gateway:
            yield Supergraph(
                url=gateway.url,
                products=products,
                owner=owner,
                owner_token=owner_token,
                other_token=other_token,
                order=order,
                provider=provider,
                owner_subject=owner_subject,
            )


async def test_gateway_joins_our_products_with_reviews_from_the_other_subgraph(
    supergraph: Supergraph,
) -> None:
    body = await supergraph.query(
        "{ products(first: 10, orderBy: PRICE_DESC) { edges { node {"
        " name price { amount currency } reviews { body rating } } } } }"
    )
    assert "errors" not in body, body
    assert [edge["node"] for edge in body["data"]["products"]["edges"]] == [
        {
            "name": "Harbour View Room",
            "price": {"amount": "120.00", "currency": "EUR"},
            "reviews": [
                {"body": "Woke up to the ferries", "rating": 5},
                {"body": "Small but spotless", "rating": 4},
                {"body": "Booked for our anniversary", "rating": 5},
            ],
        },
        {
            "name": "Old Town Walking Tour",
            "price": {"amount": "25.50", "currency": "EUR"},
            "reviews": [],
        },
    ]


async def test_gateway_resolves_products_named_by_the_other_subgraph_through_entities(
    supergraph: Supergraph,
) -> None:
    body = await supergraph.query(
        "{ latestReviews { body product { id name stock price { amount } } } }"
    )
    assert "errors" not in body, body
    product = supergraph.products[0]
    assert [review["product"] for review in body["data"]["latestReviews"]] == 3 * [
        {
            "id": to_global_id("Product", product.id),
            "name": "Harbour View Room",
            "stock": 10,
            "price": {"amount": "120.00"},
        }
    ]


async def test_gateway_forwards_the_token_so_only_the_owner_sees_their_order(
    supergraph: Supergraph,
) -> None:
    order_id = to_global_id("Order", supergraph.order.id)
    query = (
        f'{{ order(id: "{order_id}") {{ status total {{ amount }}'
        " items { quantity product { name reviews { rating } } } } }"
    )
    owner = await supergraph.query(query, token=supergraph.owner_token)
    assert "errors" not in owner, owner
    assert owner["data"]["order"] == {
        "status": "CONFIRMED",
        "total": {"amount": "240.00"},
        "items": [
            {
                "quantity": 2,
                "product": {
                    "name": "Harbour View Room",
                    "reviews": [{"rating": 5}, {"rating": 4}, {"rating": 5}],
                },
            },
        ],
    }

    other = await supergraph.query(query, token=supergraph.other_token)
    assert other["data"]["order"] is None and "errors" not in other, other

    anonymous = await supergraph.query(query)
    assert anonymous["data"] is None or anonymous["data"]["order"] is None
    assert "UNAUTHENTICATED" in error_codes(anonymous), anonymous


async def test_order_entity_fetched_for_the_other_subgraph_is_authorized_like_order_by_id(
    supergraph: Supergraph,
) -> None:
    query = "{ latestReviews { body order { id status total { amount } } } }"
    order_id = to_global_id("Order", supergraph.order.id)

    owner = await supergraph.query(query, token=supergraph.owner_token)
    assert "errors" not in owner, owner
    assert [review["order"] for review in owner["data"]["latestReviews"]] == [
        None,
        None,
        {"id": order_id, "status": "CONFIRMED", "total": {"amount": "240.00"}},
    ]

    # Another user's token: the order is simply not there.
    other = await supergraph.query(query, token=supergraph.other_token)
    assert [review["order"] for review in other["data"]["latestReviews"]] == [None, None, None]

    # No token: no order either, and the gateway passes on why.
    anonymous = await supergraph.query(query)
    assert [review["body"] for review in anonymous["data"]["latestReviews"]] == [
        "Woke up to the ferries",
        "Small but spotless",
        "Booked for our anniversary",
    ]
    assert anonymous["data"]["latestReviews"][2]["order"] is None
    assert "UNAUTHENTICATED" in error_codes(anonymous), anonymous


async def test_gateway_forwards_a_jwt_so_the_owner_reads_their_order(
    supergraph: Supergraph,
) -> None:
    """The identity provider's JWT, as a frontend sends it to the gateway: the gateway passes
    the Authorization header on, and the subgraph verifies it like any other request."""
    order_id = to_global_id("Order", supergraph.order.id)
    query = (
        f'{{ me {{ email }} order(id: "{order_id}") {{ status total {{ amount }}'
        " items { product { name reviews { rating } } } } }"
    )
    provider = supergraph.provider
    owner = await supergraph.query(query, token=provider.token(supergraph.owner_subject))
    assert "errors" not in owner, owner
    assert owner["data"]["me"] == {"email": supergraph.owner.email}
    assert owner["data"]["order"] == {
        "status": "CONFIRMED",
        "total": {"amount": "240.00"},
        "items": [
            {
                "product": {
                    "name": "Harbour View Room",
                    "reviews": [{"rating": 5}, {"rating": 4}, {"rating": 5}],
                },
            },
        ],
    }

    # Someone else signed in with the provider (provisioned on first sight): no order.
    other = await supergraph.query(query, token=provider.token("auth0|gateway-stranger"))
    assert "errors" not in other, other
    assert other["data"]["order"] is None

    # The owner's token, expired: the subgraph answers 401 before executing anything, and
    # Apollo Gateway passes that on as UNAUTHENTICATED with the subgraph's own error.
    now = int(time.time())
    expired = provider.token(supergraph.owner_subject, exp=now - 60, iat=now - 600)
    refused = await supergraph.query(query, token=expired)
    assert refused["data"] == {"me": None, "order": None}, refused
    [error] = refused["errors"]
    assert error["extensions"]["code"] == "UNAUTHENTICATED"
    assert error["extensions"]["response"]["status"] == 401
    assert "JWT expired" in json.dumps(error["extensions"]["response"]["body"])
