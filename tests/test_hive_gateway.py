"""The subgraph composes everywhere: with Apollo's composer and with The Guild's (which Hive
Gateway and Hive's schema registry use, and which refuses federation links newer than it knows),
and a query through Hive Gateway (tests/hive, pinned npm packages) joins this service with the
`reviews` subgraph, authorization included, for the owner's token, another user's and none."""

import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.settings import Settings
from db.engine import create_db_engine, create_session_factory
from db.models import Order
from gql.app import create_app
from gql.schema.export import SCHEMA_FILE
from gql.schema.ids import to_global_id
from tests.conftest import error_codes
from tests.databases import DatabaseFactory
from tests.factories import Factory
from tests.live import node_program, npm_ci, require_node, serving

HIVE_DIR = Path(__file__).resolve().parent / "hive"
GATEWAY_DIR = Path(__file__).resolve().parent / "gateway"


@pytest.fixture(scope="session")
def hive_packages() -> Path:
    require_node()
    npm_ci(HIVE_DIR)
    npm_ci(GATEWAY_DIR)  # the `reviews` subgraph, and Apollo's composer
    return HIVE_DIR


def compose(directory: Path, *schemas: tuple[str, Path]) -> subprocess.CompletedProcess[str]:
    arguments = [f"{name}={path}" for name, path in schemas]
    return subprocess.run(
        ["node", "compose.mjs", *arguments],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("composer", ["apollo", "the-guild"])
def test_the_committed_schema_composes_with_both_composers(
    hive_packages: Path, composer: str
) -> None:
    directory = GATEWAY_DIR if composer == "apollo" else HIVE_DIR
    result = compose(directory, ("booking", SCHEMA_FILE))
    assert result.returncode == 0 and result.stdout.startswith("COMPOSED"), result.stdout


def test_the_guilds_composer_refuses_a_link_newer_than_it_knows(
    hive_packages: Path, tmp_path: Path
) -> None:
    """Why the link is the lowest version the schema needs (v2.0, for `@key`)."""
    sdl = SCHEMA_FILE.read_text(encoding="utf-8")
    assert 'specs.apollo.dev/federation/v2.0"' in sdl
    newer = tmp_path / "newer.graphql"
    newer.write_text(sdl.replace("federation/v2.0", "federation/v2.11"), encoding="utf-8")
    result = compose(HIVE_DIR, ("booking", newer))
    assert result.returncode == 1
    assert "Invalid version v2.11" in result.stdout


@dataclass
class HiveSupergraph:
    url: str
    owner_token: str
    other_token: str
    order: Order

    async def query(self, query: str, *, token: str | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(self.url, json={"query": query}, headers=headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture(scope="module")
async def hive(
    hive_packages: Path, databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[HiveSupergraph]:
    database_url = await databases.create()
    settings = Settings(environment="test", redis_url=None, db_pool_size=5)
    engine = create_db_engine(database_url, settings)
    logs = tmp_path_factory.mktemp("hive")
    try:
        factory = Factory(create_session_factory(engine))
        room = await factory.product(name="Harbour View Room", price="120.00")
        owner, owner_token = await factory.user()
        _, other_token = await factory.user()
        order = await factory.order(owner, [(room, 2)])
        room_id = to_global_id("Product", room.id)
        reviews = [
            {"productId": room_id, "body": "Woke up to the ferries", "rating": 5},
            {
                "productId": room_id,
                "orderId": to_global_id("Order", order.id),
                "body": "Booked for our anniversary",
                "rating": 5,
            },
        ]
        async with (
            serving(create_app(settings, database_url=database_url)) as booking_url,
            node_program(
                GATEWAY_DIR / "reviews.mjs", env={"REVIEWS": json.dumps(reviews)}, log_dir=logs
            ) as reviews_subgraph,
        ):
            subgraphs = [
                {"name": "booking", "url": f"{booking_url}/graphql"},
                {"name": "reviews", "url": reviews_subgraph.url},
            ]
            async with node_program(
                hive_packages / "gateway.mjs",
                env={"SUBGRAPHS": json.dumps(subgraphs)},
                log_dir=logs,
            ) as gateway:
                yield HiveSupergraph(gateway.url, owner_token, other_token, order)
    finally:
        await engine.dispose()
        await databases.drop(database_url)


async def test_hive_gateway_joins_products_with_reviews(hive: HiveSupergraph) -> None:
    body = await hive.query(
        '{ products(first: 5, orderBy: PRICE_DESC, filter: {currency: "EUR"}) { totalCount'
        " edges { node { name price { amount currency } reviews { rating } } } } }"
    )
    assert "errors" not in body, body
    assert body["data"]["products"] == {
        "totalCount": 1,
        "edges": [
            {
                "node": {
                    "name": "Harbour View Room",
                    "price": {"amount": "120.00", "currency": "EUR"},
                    "reviews": [{"rating": 5}, {"rating": 5}],
                }
            }
        ],
    }


async def test_hive_gateway_forwards_the_token_so_only_the_owner_sees_their_order(
    hive: HiveSupergraph,
) -> None:
    query = "{ latestReviews { body order { id status total { amount } } } }"
    order_id = to_global_id("Order", hive.order.id)

    owner = await hive.query(query, token=hive.owner_token)
    assert "errors" not in owner, owner
    assert [review["order"] for review in owner["data"]["latestReviews"]] == [
        None,
        {"id": order_id, "status": "CONFIRMED", "total": {"amount": "240.00"}},
    ]

    other = await hive.query(query, token=hive.other_token)
    assert [review["order"] for review in other["data"]["latestReviews"]] == [None, None]

    anonymous = await hive.query(query)
    assert [review["body"] for review in anonymous["data"]["latestReviews"]] == [
        "Woke up to the ferries",
        "Booked for our anniversary",
    ]
    assert anonymous["data"]["latestReviews"][1]["order"] is None
    assert "UNAUTHENTICATED" in error_codes(anonymous), anonymous
