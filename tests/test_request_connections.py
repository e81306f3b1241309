"""A request's database access (gql/schema/context.py): a read-only request reads on a pooled
connection and makes no ORM session; a request that writes holds one connection at a time, its
reads and its session taking turns; every connection is back in the pool when it answers."""

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

from tests.conftest import GraphQL
from tests.factories import Factory
from tests.test_checkout import pid


class CheckedOut:
    """Connections out of the pool now, and at most, counted by the pool's own events."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    def on_checkout(self, *_args: Any) -> None:
        self.now += 1
        self.most = max(self.most, self.now)

    def on_checkin(self, *_args: Any) -> None:
        self.now -= 1


@pytest.fixture
def checked_out(app: FastAPI) -> Iterator[CheckedOut]:
    counter = CheckedOut()
    pool = app.state.engine.sync_engine.pool
    event.listen(pool, "checkout", counter.on_checkout)
    event.listen(pool, "checkin", counter.on_checkin)
    yield counter
    event.remove(pool, "checkout", counter.on_checkout)
    event.remove(pool, "checkin", counter.on_checkin)


@pytest.fixture
def sessions_made(app: FastAPI) -> Iterator[list[AsyncSession]]:
    """The ORM sessions the endpoint makes (it asks the app's factory for each)."""
    made: list[AsyncSession] = []
    factory: Callable[[], AsyncSession] = app.state.session_factory

    def counting() -> AsyncSession:
        session = factory()
        made.append(session)
        return session

    app.state.session_factory = counting
    yield made
    app.state.session_factory = factory


async def test_a_read_only_request_makes_no_session(
    gql: GraphQL,
    factory: Factory,
    checked_out: CheckedOut,
    sessions_made: list[AsyncSession],
) -> None:
    product = await factory.product(name="Lisbon loft")
    body = await gql(
        """query($id: ID!) {
          product(id: $id) { name }
          products(first: 5) { edges { node { name stock } } }
        }""",
        {"id": pid(product)},
    )
    assert body["data"]["product"] == {"name": "Lisbon loft"}
    assert body["data"]["products"]["edges"]
    assert sessions_made == []
    assert checked_out.most == 1
    assert checked_out.now == 0


async def test_a_request_mixing_reads_and_the_orm_holds_one_connection(
    gql: GraphQL, factory: Factory, checked_out: CheckedOut, sessions_made: list[AsyncSession]
) -> None:
    _, token = await factory.user()
    await factory.product()
    body = await gql(
        """{
          me { email }
          products(first: 2) { edges { node { name } } }
          reservations(first: 5) { edges { node { id } } }
          orders(first: 5) { edges { node { id } } }
        }""",
        token=token,
    )
    assert "errors" not in body, body
    assert len(sessions_made) == 1  # reservations are read through the ORM
    assert checked_out.most == 1
    assert checked_out.now == 0


async def test_two_writes_and_their_reads_take_turns_on_one_connection(
    gql: GraphQL, factory: Factory, checked_out: CheckedOut
) -> None:
    _, token = await factory.user()
    first, second = await factory.products(2, stock=5)
    body = await gql(
        """mutation($a: CreateOrderInput!, $b: CreateOrderInput!) {
          a: createOrder(input: $a) {
            ... on CreateOrderSuccess { order { items { product { name stock } } } }
          }
          b: createOrder(input: $b) {
            ... on CreateOrderSuccess { order { items { product { name stock } } } }
          }
        }""",
        {
            "a": {"idempotencyKey": "turns-a", "items": [{"productId": pid(first), "quantity": 1}]},
            "b": {
                "idempotencyKey": "turns-b",
                "items": [{"productId": pid(second), "quantity": 2}],
            },
        },
        token=token,
    )
    assert "errors" not in body, body
    stocks = [body["data"][k]["order"]["items"][0]["product"]["stock"] for k in ("a", "b")]
    assert stocks == [4, 3]  # each read after its own write
    assert checked_out.most == 1
    assert checked_out.now == 0


async def test_an_idle_read_connection_goes_back_to_the_pool_without_awaiting(
    app: FastAPI,
) -> None:
    """`PooledReads.release` checks in an open connection outside SQLAlchemy's greenlet: it
    relies on the pool's reset and check-in awaiting nothing for a connection that ran no
    transaction. If an upgrade makes them await, SQLAlchemy raises MissingGreenlet here."""
    from db.reads import PooledReads  # noqa: PLC0415

    engine = app.state.engine
    pool = engine.sync_engine.pool
    reads = PooledReads(engine)
    for _ in range(3):
        driver = await reads.driver()
        assert await driver.fetchval("SELECT 1") == 1
        assert not driver.is_in_transaction()
        out_before = pool.checkedout()
        await reads.release()
        assert pool.checkedout() == out_before - 1
    # A connection left in a transaction on the driver is discarded, not handed out again.
    stray = await reads.driver()
    await stray.execute("BEGIN")
    await reads.release()
    assert stray.is_closed()
    driver = await reads.driver()
    assert driver is not stray and not driver.is_in_transaction()
    await reads.release()


def test_the_apps_state_is_read_without_a_failed_lookup(app: FastAPI) -> None:
    """What the endpoint reads per request (engine, session factory, authenticator) is found by
    the normal attribute lookup, and Starlette's own reads (`state[key]`) still see it all."""
    state = app.state
    for name in ("engine", "session_factory", "authenticator"):
        assert vars(state)[name] is state[name]
    state.extra = 1
    state["item"] = 2
    assert (vars(state)["extra"], state["extra"]) == (1, 1)
    assert (vars(state)["item"], state.item) == (2, 2)
    del state.extra
    with pytest.raises(AttributeError):
        _ = state.extra
    with pytest.raises(KeyError):
        _ = state["extra"]
