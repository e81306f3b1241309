"""API tokens: resolved to an actor, and trusted for a short while without asking again."""

from fastapi import FastAPI
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db.models import ApiToken, User
from services.auth import NOT_CACHED, Actor, ActorCache, hash_token
from tests.conftest import GraphQL, StatementCounter, error_codes
from tests.factories import Factory

ME = "{ me { id } orders(first: 1) { edges { cursor } } }"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_cached_actor_is_trusted_for_its_ttl_only() -> None:
    clock = FakeClock()
    cache = ActorCache(ttl=5, clock=clock)
    actor = Actor(user_id=7, is_admin=False)
    cache.remember("hash", actor)
    clock.now += 4.9
    assert cache.get("hash") == actor
    clock.now += 0.1
    assert cache.get("hash") is NOT_CACHED


def test_a_zero_ttl_keeps_nothing_and_a_full_cache_starts_over() -> None:
    disabled = ActorCache(ttl=0)
    disabled.remember("hash", Actor(user_id=1, is_admin=False))
    assert disabled.get("hash") is NOT_CACHED

    small = ActorCache(ttl=60, max_size=2)
    for n in range(3):
        small.remember(f"hash{n}", Actor(user_id=n, is_admin=False))
    assert [small.get(f"hash{n}") is not NOT_CACHED for n in range(3)] == [False, False, True]


def test_unknown_tokens_are_remembered_apart_and_cannot_push_known_ones_out() -> None:
    clock = FakeClock()
    cache = ActorCache(ttl=5, max_size=2, clock=clock)
    actor = Actor(user_id=7, is_admin=False)
    cache.remember("known", actor)
    for n in range(10):
        cache.remember(f"made-up{n}", None)
    assert cache.get("known") == actor
    assert cache.get("made-up9") is None
    clock.now += 5
    assert cache.get("made-up9") is NOT_CACHED


async def test_a_token_is_looked_up_once_per_interval(
    app: FastAPI, factory: Factory, gql: GraphQL, statements: StatementCounter
) -> None:
    app.state.authenticator.actors = ActorCache(ttl=5)
    _, token = await factory.user()
    statements.reset()
    for _ in range(3):
        body = await gql(ME, token=token)
        assert "errors" not in body, body
    lookups = [s for s in statements.statements if "token_hash" in s]
    assert len(lookups) == 1, statements.statements


async def test_an_admin_flag_changed_in_the_database_applies_when_the_entry_expires(
    app: FastAPI, factory: Factory, gql: GraphQL, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    clock = FakeClock()
    app.state.authenticator.actors = ActorCache(ttl=5, clock=clock)
    user, token = await factory.user(is_admin=True)
    _, other_token = await factory.user()
    other = (await gql("{ me { id } }", token=other_token))["data"]["me"]
    query = "query($id: ID!) { node(id: $id) { id } }"
    variables = {"id": other["id"]}
    # Admins read any user; others only themselves.
    assert (await gql(query, variables, token=token))["data"]["node"] == other

    async with session_factory() as session, session.begin():
        await session.execute(update(User).where(User.id == user.id).values(is_admin=False))
    clock.now += 4
    assert (await gql(query, variables, token=token))["data"]["node"] == other
    clock.now += 1
    assert (await gql(query, variables, token=token))["data"]["node"] is None


async def test_an_unknown_token_is_remembered_for_the_ttl_only(
    app: FastAPI, gql: GraphQL, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    clock = FakeClock()
    app.state.authenticator.actors = ActorCache(ttl=5, clock=clock)
    token = "bk_issued_after_its_first_use"
    assert set(error_codes(await gql(ME, token=token))) == {"UNAUTHENTICATED"}
    async with session_factory() as session, session.begin():
        user = User(email="late@example.test", name="Late")
        session.add(user)
        await session.flush()
        session.add(ApiToken(user_id=user.id, token_hash=hash_token(token), prefix=token[:20]))
    assert set(error_codes(await gql(ME, token=token))) == {"UNAUTHENTICATED"}
    clock.now += 5
    body = await gql(ME, token=token)
    assert "errors" not in body, body
    assert body["data"]["me"] is not None
