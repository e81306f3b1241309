"""Persisted documents from the tools frontends use: graphql-codegen's client-preset manifest
(`sha256:<hex>` keys or bare hex), Apollo's persisted query manifest, and our own format;
served by GraphQL over HTTP's `documentId` and by the APQ extension, in allow-list mode and
without a manifest."""

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from gql.transport.apq import load_manifest
from tests.conftest import error_codes
from tests.edge_support import app_client
from tests.factories import Factory

PRODUCTS = "query Products { products(first: 2) { edges { node { id name } } } }"
TYPENAME = "query Typename { __typename }"
OTHER = "{ products(first: 1) { edges { cursor } } }"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def codegen_manifest(*, prefixed: bool) -> dict[str, str]:
    """graphql-codegen's client preset `persisted-documents.json`: hash → document."""
    prefix = "sha256:" if prefixed else ""
    return {prefix + sha256(query): query for query in (PRODUCTS, TYPENAME)}


def apollo_manifest(*, custom_id: str | None = None) -> dict[str, Any]:
    """`generate-persisted-query-manifest`'s output (ids are the body's SHA-256 by default)."""
    return {
        "format": "apollo-persisted-query-manifest",
        "version": 1,
        "operations": [
            {
                "id": custom_id or sha256(PRODUCTS),
                "name": "Products",
                "type": "query",
                "body": PRODUCTS,
            },
            {"id": sha256(TYPENAME), "name": "Typename", "type": "query", "body": TYPENAME},
        ],
    }


MANIFESTS = {
    "codegen sha256: keys": codegen_manifest(prefixed=True),
    "codegen bare hex keys": codegen_manifest(prefixed=False),
    "apollo": apollo_manifest(),
    "ours": {sha256(PRODUCTS): PRODUCTS, sha256(TYPENAME): TYPENAME},
}


async def post(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/graphql", json=body)


def names(response: httpx.Response) -> list[str]:
    body = response.json()
    assert "errors" not in body, body
    return [edge["node"]["name"] for edge in body["data"]["products"]["edges"]]


@pytest.mark.parametrize("manifest", list(MANIFESTS.values()), ids=list(MANIFESTS))
async def test_allow_list_mode_serves_any_manifest_format_by_document_id_and_apq(
    database_url: str, factory: Factory, tmp_path: Path, manifest: dict[str, Any]
) -> None:
    await factory.product(name="Ferry Cabin")
    path = tmp_path / "persisted-documents.json"
    path.write_text(json.dumps(manifest))
    apq = {"persistedQuery": {"version": 1, "sha256Hash": sha256(PRODUCTS)}}
    async with app_client(database_url, persisted_queries_manifest=path) as (_, client):
        by_prefixed_id = await post(client, {"documentId": f"sha256:{sha256(PRODUCTS)}"})
        by_hex_id = await post(client, {"documentId": sha256(PRODUCTS)})
        by_get = await client.get(
            "/graphql",
            params={"documentId": f"sha256:{sha256(PRODUCTS)}"},
            headers={"Accept": "application/graphql-response+json"},
        )
        by_apq = await post(client, {"extensions": apq})
        typename = await post(client, {"documentId": f"sha256:{sha256(TYPENAME)}"})
        free_text = await post(client, {"query": OTHER})
        unknown_id = await post(client, {"documentId": f"sha256:{sha256(OTHER)}"})
        registration = await post(
            client,
            {
                "query": OTHER,
                "extensions": {"persistedQuery": {"version": 1, "sha256Hash": sha256(OTHER)}},
            },
        )
        both = await post(client, {"documentId": sha256(PRODUCTS), "query": PRODUCTS})
    for response in (by_prefixed_id, by_hex_id, by_get, by_apq):
        assert response.status_code == 200
        assert names(response) == ["Ferry Cabin"]
    assert typename.json() == {"data": {"__typename": "Query"}}
    for refused in (free_text, unknown_id, registration):
        assert refused.status_code == 400
        assert error_codes(refused.json()) == ["PERSISTED_QUERY_NOT_ALLOWED"]
    assert both.status_code == 400
    assert error_codes(both.json()) == ["BAD_REQUEST"]


async def test_an_apollo_manifest_id_of_the_clients_choosing_names_its_document(
    database_url: str, factory: Factory, tmp_path: Path
) -> None:
    await factory.product(name="Night Train")
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(apollo_manifest(custom_id="products-v3")))
    async with app_client(database_url, persisted_queries_manifest=path) as (_, client):
        by_id = await post(client, {"documentId": "products-v3"})
        by_hash = await post(client, {"documentId": f"sha256:{sha256(PRODUCTS)}"})
    assert names(by_id) == names(by_hash) == ["Night Train"]


async def test_without_a_manifest_a_document_id_runs_a_registered_query(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    await factory.product(name="Sleeper")
    document_id = f"sha256:{sha256(PRODUCTS)}"
    unknown = await post(client, {"documentId": document_id})
    assert unknown.status_code == 200  # a request error: 400 only for graphql-response+json
    assert error_codes(unknown.json()) == ["PERSISTED_QUERY_NOT_FOUND"]
    apq = {"persistedQuery": {"version": 1, "sha256Hash": sha256(PRODUCTS)}}
    assert names(await post(client, {"query": PRODUCTS, "extensions": apq})) == ["Sleeper"]
    assert names(await post(client, {"documentId": document_id})) == ["Sleeper"]
    assert names(await post(client, {"documentId": sha256(PRODUCTS)})) == ["Sleeper"]
    malformed = await post(client, {"documentId": "products-v3"})
    assert malformed.status_code == 400
    assert error_codes(malformed.json()) == ["BAD_REQUEST"]


@pytest.mark.parametrize(
    "manifest",
    [
        {f"sha256:{sha256(TYPENAME)}": PRODUCTS},
        {sha256(TYPENAME): PRODUCTS},
        {hashlib.sha1(PRODUCTS.encode()).hexdigest(): PRODUCTS},  # codegen's sha1: say so
        {**apollo_manifest(), "version": 2},
        {"format": "apollo-persisted-query-manifest", "version": 1, "operations": [{"id": "x"}]},
        [PRODUCTS],
    ],
)
def test_a_manifest_with_a_wrong_entry_fails_at_startup(tmp_path: Path, manifest: Any) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=str(path)):
        load_manifest(path)
