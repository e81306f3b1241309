"""Bearer JWTs of the identity provider: verified against its JWKS (served over real HTTP),
users provisioned on first sight, every bad token refused with 401 and no SQL."""

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.settings import Settings
from db.models import User
from gql.app import create_app
from gql.schema.ids import to_global_id
from services.auth import ActorCache
from services.jwks import SigningKeys
from services.jwt_tokens import JwtVerifier
from tests.conftest import StatementCounter, error_codes
from tests.documents import ENTITIES
from tests.factories import Factory
from tests.identity_provider import AUDIENCE, ISSUER, IdentityProvider, JwksServer

ME = "{ me { id email name isAdmin } }"
ORDER = "query($id: ID!) { order(id: $id) { id } }"
NODE = "query($id: ID!) { node(id: $id) { id } }"


@pytest.fixture(scope="module")
def provider() -> IdentityProvider:
    return IdentityProvider()


@pytest.fixture
def jwks(provider: IdentityProvider) -> Iterator[JwksServer]:
    server = JwksServer(provider)
    with server.serving():
        yield server


def jwt_settings(jwks_url: str, **overrides: Any) -> Settings:
    fields: dict[str, Any] = {
        "environment": "test",
        "redis_url": None,
        "db_pool_size": 5,
        "db_max_overflow": 20,
        "rate_limit_enabled": False,
        "jwt_jwks_url": jwks_url,
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        **overrides,
    }
    return Settings(**fields)


@pytest.fixture
def settings(jwks: JwksServer) -> Settings:
    return jwt_settings(jwks.url)


async def post(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None, *, token: str
) -> httpx.Response:
    response = await client.post(
        "/graphql",
        json={"query": query, "variables": variables or {}},
        headers={"Authorization": f"Bearer {token}"},
    )
    await asyncio.sleep(0)  # let asyncpg's query loggers run (StatementCounter)
    return response


async def data_of(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None, *, token: str
) -> dict[str, Any]:
    response = await post(client, query, variables, token=token)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


def assert_refused(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    body = response.json()
    assert "data" not in body
    assert error_codes(body) == ["UNAUTHENTICATED"]
    assert reason in body["errors"][0]["message"], body


async def users_count(session_factory: async_sessionmaker[AsyncSession]) -> int:
    async with session_factory() as session:
        return int(await session.scalar(select(func.count()).select_from(User)) or 0)


async def test_a_valid_token_provisions_a_user_then_the_same_user_is_recognised(
    client: httpx.AsyncClient,
    provider: IdentityProvider,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    subject = "auth0|grace"
    first = await data_of(client, ME, token=provider.token(subject, name="Grace Hopper"))
    assert first["me"]["email"] == "auth0.grace@people.example.test"
    assert first["me"]["name"] == "Grace Hopper"
    assert first["me"]["isAdmin"] is False

    # Another token (EC key this time) of the same person: the same user, none created.
    again = await data_of(client, ME, token=provider.token(subject, kid="ec-1", name="G. H."))
    assert again["me"] == first["me"]
    assert await users_count(session_factory) == 1
    async with session_factory() as session:
        stored = await session.scalar(select(User.external_subject))
    assert stored == subject


async def test_a_known_subject_costs_one_statement_and_a_cached_one_none(
    app: FastAPI,
    client: httpx.AsyncClient,
    provider: IdentityProvider,
    factory: Factory,
    statements: StatementCounter,
) -> None:
    await factory.user(subject="kc|known")
    token = provider.token("kc|known")
    statements.reset()
    await data_of(client, "{ products(first: 1) { edges { cursor } } }", token=token)
    subject_lookups = [s for s in statements.statements if "external_subject" in s]
    assert len(subject_lookups) == 1, statements.statements

    app.state.authenticator.subjects = ActorCache(ttl=5)
    for _ in range(3):
        await data_of(client, "{ me { id } }", token=token)
    statements.reset()
    await data_of(client, "{ products(first: 1) { edges { cursor } } }", token=token)
    assert not [s for s in statements.statements if "external_subject" in s]


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _refusals(provider: IdentityProvider) -> dict[str, tuple[str, str]]:
    """Each bad token, with what its refusal says."""
    claims = provider.claims()
    public_pem = (
        provider.keys["rsa-1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    # The classic confusion attack: HMAC "signed" with the public key everyone can fetch.
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT', 'kid': 'rsa-1'})}.{_b64(claims)}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    hs256 = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': 'rsa-1'})}.{_b64(claims)}."
    stranger = provider.stranger
    now = int(claims["iat"])
    return {
        "expired": (provider.token(exp=now - 120, iat=now - 600, nbf=now - 600), "expired"),
        "not yet valid": (provider.token(nbf=now + 600), "not yet valid"),
        "issued in the future": (provider.token(iat=now + 600), "not yet valid"),
        "wrong issuer": (provider.token(iss="https://evil.example.test/"), "another issuer"),
        "wrong audience": (provider.token(aud="https://other-app.example.test"), "audience"),
        "no audience": (provider.token(aud=None), "'aud'"),
        "wrong key": (provider.token(signing_key=stranger), "signature"),
        "unknown kid": (provider.token(kid="rotated-away", signing_key=stranger), "unknown key"),
        "no kid": (jwt.encode(claims, provider.keys["rsa-1"], algorithm="RS256"), "kid"),
        "alg none": (unsigned, "'none'"),
        "HS256 with the public key": (hs256, "'HS256'"),
        "RS256 header on the EC key": (
            provider.token(kid="ec-1", signing_key=provider.keys["rsa-1"]),
            "signature",
        ),
        "garbage": ("not-a-token!.garbage.garbage", "malformed"),
        "garbage after a good header": (
            f"{_b64({'alg': 'RS256', 'kid': 'rsa-1'})}.garbage!.garbage",
            "invalid",
        ),
        "dots only": ("..", "malformed"),
        "payload not JSON": (f"{_b64({'alg': 'RS256', 'kid': 'rsa-1'})}.bm90IGpzb24.c2ln", ""),
    }


REFUSALS = [
    "expired",
    "not yet valid",
    "issued in the future",
    "wrong issuer",
    "wrong audience",
    "no audience",
    "wrong key",
    "unknown kid",
    "no kid",
    "alg none",
    "HS256 with the public key",
    "RS256 header on the EC key",
    "garbage",
    "garbage after a good header",
    "dots only",
    "payload not JSON",
]


@pytest.mark.parametrize("case", REFUSALS)
async def test_a_bad_token_is_refused_with_401_before_any_sql(
    case: str,
    client: httpx.AsyncClient,
    provider: IdentityProvider,
    statements: StatementCounter,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    token, reason = _refusals(provider)[case]
    statements.reset()
    response = await post(client, "{ products(first: 1) { edges { cursor } } }", token=token)
    assert_refused(response, reason)
    assert statements.count == 0, statements.statements
    assert await users_count(session_factory) == 0


async def test_an_unknown_kid_refreshes_the_keys_at_most_once_per_interval(
    app: FastAPI, client: httpx.AsyncClient, provider: IdentityProvider, jwks: JwksServer
) -> None:
    clock = FakeClock()
    app.state.authenticator.jwt.keys = SigningKeys(
        jwks.url, max_age=600, min_interval=30, timeout=5, clock=clock
    )
    await data_of(client, "{ me { id } }", token=provider.token())
    assert jwks.requests == 1
    stranger = provider.stranger
    for n in range(20):
        made_up = provider.token(kid=f"made-up-{n}", signing_key=stranger)
        assert_refused(await post(client, "{ me { id } }", token=made_up), "unknown key")
    assert jwks.requests == 1  # the interval since the first fetch has not passed

    # The provider rotates: a new key, first seen in a token. One refresh picks it up.
    provider.add_key("rsa-2", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    try:
        clock.now += 30
        await data_of(client, "{ me { id } }", token=provider.token(kid="rsa-2"))
        assert jwks.requests == 2
        made_up = provider.token(kid="made-up-x", signing_key=stranger)
        assert_refused(await post(client, "{ me { id } }", token=made_up), "unknown key")
        assert jwks.requests == 2
    finally:
        del provider.keys["rsa-2"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_cached_keys_keep_working_while_the_provider_is_down(
    app: FastAPI, client: httpx.AsyncClient, provider: IdentityProvider, jwks: JwksServer
) -> None:
    clock = FakeClock()
    app.state.authenticator.jwt.keys = SigningKeys(
        jwks.url, max_age=60, min_interval=5, timeout=5, clock=clock
    )
    await data_of(client, "{ me { id } }", token=provider.token("okta|ada"))
    jwks.down = True
    clock.now += 3600  # long past max_age: a background refresh is tried, and fails
    for _ in range(3):
        await data_of(client, "{ me { id } }", token=provider.token("okta|ada", kid="ec-1"))
        await asyncio.sleep(0.05)
    assert jwks.requests == 2  # one refresh attempt per interval, not one per request


async def test_without_cached_keys_a_provider_outage_is_503_not_401(
    client: httpx.AsyncClient, provider: IdentityProvider, jwks: JwksServer
) -> None:
    jwks.down = True
    response = await post(client, "{ me { id } }", token=provider.token())
    assert response.status_code == 503, response.text
    assert error_codes(response.json()) == ["SERVICE_UNAVAILABLE"]
    assert int(response.headers["retry-after"]) >= 1
    # Within the interval, no further request waits on the provider.
    assert (await post(client, "{ me { id } }", token=provider.token())).status_code == 503
    assert jwks.requests == 1


async def test_an_unreachable_jwks_url_is_503(
    database_url: str, provider: IdentityProvider
) -> None:
    app = create_app(
        jwt_settings("http://127.0.0.1:9/jwks.json", jwt_jwks_timeout=2),
        database_url=database_url,
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client,
    ):
        response = await post(client, "{ me { id } }", token=provider.token())
    assert response.status_code == 503, response.text


async def test_a_role_makes_the_viewer_an_admin_for_the_request_only(
    client: httpx.AsyncClient,
    provider: IdentityProvider,
    factory: Factory,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    owner, _ = await factory.user()
    order = await factory.order(owner, [(await factory.product(), 1)])
    order_id = to_global_id("Order", order.id)

    admin = provider.token("entra|boss", roles=["reader", "admin"])
    assert (await data_of(client, ORDER, {"id": order_id}, token=admin))["order"] == {
        "id": order_id
    }
    plain = provider.token("entra|boss", roles=["reader"])
    assert (await data_of(client, ORDER, {"id": order_id}, token=plain))["order"] is None
    async with session_factory() as session:
        flag = await session.scalar(
            select(User.is_admin).where(User.external_subject == "entra|boss")
        )
    assert flag is False  # never stored


async def test_a_customer_jwt_cannot_read_another_users_order_through_any_door(
    client: httpx.AsyncClient, provider: IdentityProvider, factory: Factory
) -> None:
    owner, _ = await factory.user(subject="auth0|owner")
    order = await factory.order(owner, [(await factory.product(), 1)])
    order_id = to_global_id("Order", order.id)
    representations = [{"__typename": "Order", "id": order_id}]

    mine = provider.token("auth0|owner")
    assert (await data_of(client, ORDER, {"id": order_id}, token=mine))["order"] is not None
    assert (await data_of(client, NODE, {"id": order_id}, token=mine))["node"] is not None
    entities = await data_of(client, ENTITIES, {"representations": representations}, token=mine)
    assert entities["_entities"][0]["id"] == order_id

    theirs = provider.token("auth0|someone-else")
    assert (await data_of(client, ORDER, {"id": order_id}, token=theirs))["order"] is None
    assert (await data_of(client, NODE, {"id": order_id}, token=theirs))["node"] is None
    entities = await data_of(client, ENTITIES, {"representations": representations}, token=theirs)
    assert entities["_entities"] == [None]


async def test_api_tokens_keep_working_beside_jwts(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user, token = await factory.user()
    assert (await data_of(client, ME, token=token))["me"]["email"] == user.email
    # A bad API token is still anonymous with a reason, not a 401: nothing changed for them.
    response = await post(client, ME, token="bk_not_a_real_token_at_all")
    assert response.status_code == 200
    assert error_codes(response.json()) == ["UNAUTHENTICATED"]


async def test_a_real_sized_jwt_passes_the_header_cap_and_a_huge_one_does_not(
    client: httpx.AsyncClient, provider: IdentityProvider
) -> None:
    large = provider.token(groups=[f"group-{n:04d}" for n in range(300)])
    assert 4000 < len(large) < 8192
    assert (await data_of(client, ME, token=large))["me"] is not None

    huge = provider.token(groups=[f"group-{n:04d}" for n in range(800)])
    assert len(huge) > 8192
    response = await post(client, ME, token=huge)
    assert response.status_code == 200
    assert "malformed Authorization header" in response.json()["errors"][0]["message"]


async def test_keys_can_come_from_a_file_url(
    database_url: str, provider: IdentityProvider, tmp_path: Path
) -> None:
    url = provider.write_jwks(tmp_path / "jwks.json")
    assert url.startswith("file://")
    app = create_app(jwt_settings(url), database_url=database_url)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client,
    ):
        body = await data_of(client, ME, token=provider.token(kid="ec-1"))
    assert body["me"]["name"] == "Grace Hopper"


class TestProvisioning:
    @pytest.fixture
    def settings(self, jwks: JwksServer, request: pytest.FixtureRequest) -> Settings:
        return jwt_settings(jwks.url, **getattr(request, "param", {}))

    @pytest.mark.parametrize("settings", [{"jwt_auto_provision": False}], indirect=True)
    async def test_without_auto_provisioning_only_known_subjects_get_in(
        self,
        client: httpx.AsyncClient,
        provider: IdentityProvider,
        factory: Factory,
        session_factory: async_sessionmaker[AsyncSession],
    ) -> None:
        assert_refused(await post(client, ME, token=provider.token("kc|stranger")), "no user")
        assert await users_count(session_factory) == 0
        user, _ = await factory.user(subject="kc|member")
        body = await data_of(client, ME, token=provider.token("kc|member"))
        assert body["me"]["email"] == user.email

    @pytest.mark.parametrize("settings", [{"auth_cache_seconds": 30}], indirect=True)
    async def test_a_verified_email_links_the_existing_user_and_an_unverified_one_is_refused(
        self,
        client: httpx.AsyncClient,
        provider: IdentityProvider,
        factory: Factory,
        session_factory: async_sessionmaker[AsyncSession],
    ) -> None:
        user, _ = await factory.user()
        unverified = provider.token("auth0|owner", email=user.email, email_verified=False)
        assert_refused(await post(client, ME, token=unverified), "verified")
        # The refusal was the token's, not the subject's: the same subject's next token,
        # verified, is taken at once (the authentication cache does not hold the refusal).
        verified = provider.token("auth0|owner", email=user.email, email_verified="true")
        body = await data_of(client, ME, token=verified)
        assert body["me"]["id"] == to_global_id("User", user.id)
        # Linked now: another subject with the same verified e-mail cannot take it over.
        other = provider.token("auth0|claimant", email=user.email)
        assert_refused(await post(client, ME, token=other), "another identity")
        assert await users_count(session_factory) == 1

    async def test_a_token_without_email_cannot_create_a_user(
        self, client: httpx.AsyncClient, provider: IdentityProvider
    ) -> None:
        assert_refused(await post(client, ME, token=provider.token(email=None)), "email")

    async def test_concurrent_first_requests_of_a_subject_create_one_user(
        self,
        client: httpx.AsyncClient,
        provider: IdentityProvider,
        session_factory: async_sessionmaker[AsyncSession],
    ) -> None:
        token = provider.token("auth0|eager")
        bodies = await asyncio.gather(*(data_of(client, ME, token=token) for _ in range(8)))
        assert len({body["me"]["id"] for body in bodies}) == 1
        assert await users_count(session_factory) == 1


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"jwt_algorithms": "RS256,none"}, "none"),
        ({"jwt_algorithms": "HS256"}, "HS256"),
        ({"jwt_algorithms": ""}, "empty"),
        ({"jwt_issuer": None}, "JWT_ISSUER"),
        ({"jwt_audience": None}, "JWT_AUDIENCE"),
        ({"jwt_jwks_url": "ftp://id.example.test/jwks"}, "JWT_JWKS_URL"),
        ({"environment": "production", "jwt_jwks_url": "http://id/jwks"}, "https or file"),
    ],
)
def test_unsafe_jwt_settings_are_refused_at_startup(
    overrides: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        jwt_settings("https://id.example.test/.well-known/jwks.json", **overrides)


def test_jwt_algorithms_default_to_rs256_and_es256_and_read_a_list() -> None:
    assert Settings().jwt_algorithms == ["RS256", "ES256"]
    assert jwt_settings("file:///jwks.json", jwt_algorithms="ES256, PS256").jwt_algorithms == [
        "ES256",
        "PS256",
    ]


async def test_a_verified_token_is_remembered_until_the_cache_or_the_token_expires(
    provider: IdentityProvider, tmp_path: Path
) -> None:
    url = provider.write_jwks(tmp_path / "jwks.json")
    now = [time.time()]

    def verifier(cache_seconds: float) -> JwtVerifier:
        keys = SigningKeys(url, max_age=600, min_interval=30, timeout=5)
        return JwtVerifier(
            keys,
            issuer=ISSUER,
            audience=AUDIENCE,
            algorithms=["RS256", "ES256"],
            leeway=0,
            roles_claim="roles",
            cache_seconds=cache_seconds,
            clock=lambda: now[0],
        )

    caching = verifier(5)
    long_lived = provider.token()
    first = await caching.verify(long_lived)
    assert await caching.verify(long_lived) is first  # no second verification
    now[0] += 5
    assert await caching.verify(long_lived) is not first  # the cache's time is up

    expiring = provider.token(exp=int(now[0]) + 2)
    first = await caching.verify(expiring)
    now[0] += 2  # still inside the 5 s, but the token's own exp has come
    assert await caching.verify(expiring) is not first

    uncached = verifier(0)
    assert await uncached.verify(long_lived) is not await uncached.verify(long_lived)


async def test_refused_tokens_count_against_the_callers_rate_limit(
    database_url: str, provider: IdentityProvider, jwks: JwksServer
) -> None:
    """A flood of bad JWTs costs a signature check each: it is counted like any request, so
    the caller's limit ends it with 429 instead of an endless stream of 401s."""
    settings = jwt_settings(jwks.url, rate_limit_enabled=True, rate_limit_default="3/minute")
    app = create_app(settings, database_url=database_url)
    now = int(time.time())
    expired = provider.token(exp=now - 120, iat=now - 600, nbf=now - 600)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            statuses = [
                (await post(client, "{ me { id } }", token=expired)).status_code for _ in range(5)
            ]
    assert statuses == [401, 401, 401, 429, 429]
