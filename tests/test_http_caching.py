"""HTTP caching of GET results, against a running server: public and cacheable for an anonymous
operation that reads only public data, `private, no-store` for everything else; an ETag on
every GET result and 304 when the client already has it; nothing of it on POST."""

import json

import httpx

from gql.app import create_app
from gql.schema.ids import to_global_id
from tests.edge_support import edge_settings
from tests.factories import Factory
from tests.live import serving

CATALOGUE = "{ products(first: 2) { totalCount edges { node { id name price { amount } } } } }"
ORDERS = "{ orders(first: 2) { edges { node { id } } } }"
NODE = "query($id: ID!) { node(id: $id) { id ... on Product { name } } }"


async def test_public_get_results_are_cacheable_and_revalidate_with_304(
    database_url: str, factory: Factory
) -> None:
    product = await factory.product(name="Lagoon Kayak Tour")
    user, token = await factory.user()
    order = await factory.order(user, [(product, 1)])
    app = create_app(edge_settings(http_cache_max_age=120), database_url=database_url)
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as client:

        async def get(
            query: str, variables: dict[str, str] | None = None, **headers: str
        ) -> httpx.Response:
            params = {"query": query}
            if variables is not None:
                params["variables"] = json.dumps(variables)
            return await client.get(
                "/graphql", params=params, headers={"Accept": "application/json", **headers}
            )

        catalogue = await get(CATALOGUE)
        assert catalogue.status_code == 200
        assert catalogue.headers["cache-control"] == "public, max-age=120"
        assert (
            "Accept" in catalogue.headers["vary"] and "Authorization" in catalogue.headers["vary"]
        )
        etag = catalogue.headers["etag"]

        revalidated = await get(CATALOGUE, **{"If-None-Match": etag})
        assert revalidated.status_code == 304
        assert revalidated.content == b""
        assert revalidated.headers["etag"] == etag
        assert revalidated.headers["cache-control"] == "public, max-age=120"
        changed = await get(CATALOGUE, **{"If-None-Match": '"something-else"'})
        assert changed.status_code == 200 and changed.json() == catalogue.json()

        # A product by `node` is public; an order by `node` is not, whoever asks.
        product_node = await get(NODE, {"id": to_global_id("Product", product.id)})
        assert product_node.json()["data"]["node"]["name"] == "Lagoon Kayak Tour"
        assert product_node.headers["cache-control"] == "public, max-age=120"
        order_node = await get(NODE, {"id": to_global_id("Order", order.id)})
        assert order_node.headers["cache-control"] == "private, no-store"

        # With a token, or reading the viewer's data, or with errors: private.
        with_token = await get(CATALOGUE, Authorization=f"Bearer {token}")
        assert with_token.headers["cache-control"] == "private, no-store"
        own = await get(ORDERS, Authorization=f"Bearer {token}")
        assert own.status_code == 200 and own.headers["cache-control"] == "private, no-store"
        assert "etag" in own.headers
        mixed = await get("{ products(first: 1) { edges { cursor } } me { id } }")
        assert mixed.headers["cache-control"] == "private, no-store"
        failed = await get("{ products(first: 1000) { edges { cursor } } }")
        assert failed.headers["cache-control"] == "private, no-store"
        invalid = await get("{ nope }")
        assert invalid.headers["cache-control"] == "private, no-store"

        # POST results carry none of it.
        posted = await client.post("/graphql", json={"query": CATALOGUE})
        assert "cache-control" not in posted.headers and "etag" not in posted.headers


async def test_without_a_max_age_every_get_result_is_private(
    database_url: str, factory: Factory
) -> None:
    await factory.product()
    app = create_app(edge_settings(http_cache_max_age=0), database_url=database_url)
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as client:
        response = await client.get(
            "/graphql", params={"query": CATALOGUE}, headers={"Accept": "application/json"}
        )
    assert response.headers["cache-control"] == "private, no-store"
