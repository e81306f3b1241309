"""CORS: configured frontend origins may call the API from a browser; others may not."""

from collections.abc import AsyncIterator

import httpx
import pytest

from core.settings import Settings
from gql.app import create_app

ALLOWED = "https://app.booking.test"


@pytest.fixture
async def cors_client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(environment="test", redis_url=None, cors_origins=[ALLOWED])
    application = create_app(settings, database_url=database_url)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def test_a_configured_origin_may_preflight_and_read_responses(
    cors_client: httpx.AsyncClient,
) -> None:
    preflight = await cors_client.options(
        "/graphql",
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()

    response = await cors_client.post(
        "/graphql", json={"query": "{ __typename }"}, headers={"Origin": ALLOWED}
    )
    assert response.json() == {"data": {"__typename": "Query"}}
    assert response.headers["access-control-allow-origin"] == ALLOWED


async def test_an_unlisted_origin_gets_no_cors_headers(cors_client: httpx.AsyncClient) -> None:
    other = "https://evil.example"
    preflight = await cors_client.options(
        "/graphql",
        headers={"Origin": other, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers

    response = await cors_client.post(
        "/graphql", json={"query": "{ __typename }"}, headers={"Origin": other}
    )
    assert "access-control-allow-origin" not in response.headers


async def test_no_origin_is_allowed_by_default(client: httpx.AsyncClient) -> None:
    assert Settings.model_fields["cors_origins"].default == []
    response = await client.post(
        "/graphql",
        json={"query": "{ __typename }"},
        headers={"Origin": "https://app.booking.test"},
    )
    assert "access-control-allow-origin" not in response.headers
