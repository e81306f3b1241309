"""Holds on stock: taken when reserved, given back exactly once when released or expired, and
turned into an order at checkout."""

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.settings import Settings
from db.models import Reservation, ReservationStatus
from gql.schema.ids import row_id_of, to_global_id
from services.reservations import effective_status
from services.worker import sweep_once
from tests.conftest import GraphQL, StatementCounter, error_codes
from tests.documents import RELEASE
from tests.factories import Factory
from tests.test_checkout import CREATE_ORDER, assert_one_order_for_all, pid, stock_of

RESERVE = """
mutation Reserve($input: ReserveProductInput!) {
  reserveProduct(input: $input) {
    __typename
    ... on UserError { message }
    ... on ReserveProductSuccess {
      reservation { id quantity status expiresAt createdAt product { id stock } }
    }
    ... on InsufficientStock { productId requested available }
  }
}
"""


RESERVATION_NODE = """
query Node($id: ID!) { node(id: $id) { ... on Reservation { id status quantity } } }
"""


@pytest.fixture(params=[True, False], ids=["one-statement-writes", "transactions"])
def settings(request: pytest.FixtureRequest) -> Settings:
    """Every test here runs with the one-statement writes (the default) and without them,
    the ORM transactions they are the fast path of (tests/test_one_statement_writes.py)."""
    return Settings(
        environment="test",
        redis_url=None,
        db_pool_size=10,
        db_max_overflow=20,
        db_pool_timeout=60,
        db_one_statement_writes=request.param,
        rate_limit_enabled=False,  # concurrency tests, not limit tests
    )


async def reserve(gql: GraphQL, token: str, product: Any, quantity: int, **extra: Any) -> Any:
    body = await gql(
        RESERVE,
        {"input": {"productId": pid(product), "quantity": quantity, **extra}},
        token=token,
    )
    # Payloads are nullable: a refused field is null in `data`, its error in `errors`.
    payload = (body.get("data") or {}).get("reserveProduct")
    return payload if payload is not None else body


async def expire(session_factory: async_sessionmaker[AsyncSession], reservation_gid: str) -> None:
    """Move a hold's deadline into the past, as time would."""
    async with session_factory() as session, session.begin():
        await session.execute(
            update(Reservation)
            .where(Reservation.id == row_id_of(reservation_gid, "Reservation"))
            .values(expires_at=text("now() - interval '1 second'"))
        )


async def test_reserving_takes_stock_and_releasing_gives_it_back_once(
    factory: Factory, gql: GraphQL, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    _, token = await factory.user()
    product = await factory.product(stock=5)
    held = await reserve(gql, token, product, 3, ttlSeconds=600)
    assert held["__typename"] == "ReserveProductSuccess"
    reservation = held["reservation"]
    assert reservation["status"] == "HELD"
    assert reservation["quantity"] == 3
    assert reservation["product"] == {"id": pid(product), "stock": 2}
    assert reservation["expiresAt"] > reservation["createdAt"]

    releases = await asyncio.gather(
        *(gql(RELEASE, {"id": reservation["id"]}, token=token) for _ in range(4))
    )
    kinds = sorted(body["data"]["releaseReservation"]["__typename"] for body in releases)
    assert kinds == ["ReleaseReservationSuccess"] + ["ReservationNotHeld"] * 3
    assert await stock_of(session_factory, product) == 5


async def test_a_hold_the_stock_allows_is_taken_in_one_statement(
    factory: Factory, gql: GraphQL, statements: StatementCounter, settings: Settings
) -> None:
    """The product's row lock is held for that statement only (with one-statement writes: it
    is its own transaction) or for it and the commit (before: lock, update and insert, three
    round trips under the lock of a hot product)."""
    _, token = await factory.user()
    product = await factory.product(stock=5)
    statements.reset()
    held = await reserve(gql, token, product, 2, ttlSeconds=600)
    assert held["__typename"] == "ReserveProductSuccess"
    writes = [s for s in statements.statements if "products" in s or "reservations" in s]
    assert len(writes) == 2, statements.statements  # the hold; the product of its selection
    assert writes[0].lstrip().startswith("WITH taken AS"), writes[0]
    if settings.db_one_statement_writes:
        assert statements.transaction_control == []
    else:
        assert statements.transaction_control == ["BEGIN;", "COMMIT;"]


async def test_a_hold_refused_sends_its_take_statement_once(
    factory: Factory, gql: GraphQL, statements: StatementCounter
) -> None:
    """A hold the one statement could not take goes to the lock at once: the conditional
    take is not sent again inside the transaction (with or without one-statement writes)."""
    _, token = await factory.user()
    product = await factory.product(stock=1)
    statements.reset()
    refused = await reserve(gql, token, product, 2)
    assert refused["__typename"] == "InsufficientStock"
    takes = [s for s in statements.statements if s.lstrip().startswith("WITH taken AS")]
    assert len(takes) == 1, statements.statements
    assert any("FOR UPDATE" in s for s in statements.statements), statements.statements


async def test_a_hold_beyond_the_stock_is_insufficient_stock(
    factory: Factory, gql: GraphQL
) -> None:
    _, token = await factory.user()
    product = await factory.product(stock=2)
    refused = await reserve(gql, token, product, 3)
    assert refused == {
        "__typename": "InsufficientStock",
        "message": f"product {pid(product)} has 2 unit(s) available, 3 requested",
        "productId": pid(product),
        "requested": 3,
        "available": 2,
    }


@pytest.mark.parametrize(
    "extra", [{"quantity": 0}, {"quantity": 101}, {"ttlSeconds": 5}, {"ttlSeconds": 86_400}]
)
async def test_bad_hold_input_is_bad_user_input(
    factory: Factory, gql: GraphQL, extra: dict[str, int]
) -> None:
    _, token = await factory.user()
    product = await factory.product(stock=2)
    fields = {"quantity": 1, **extra}
    body = await reserve(gql, token, product, **fields)
    assert error_codes(body) == ["BAD_USER_INPUT"]


async def test_other_users_cannot_see_or_release_a_hold(factory: Factory, gql: GraphQL) -> None:
    _, owner = await factory.user()
    _, stranger = await factory.user()
    product = await factory.product(stock=2)
    held = (await reserve(gql, owner, product, 1))["reservation"]
    released = await gql(RELEASE, {"id": held["id"]}, token=stranger)
    seen = await gql(RESERVATION_NODE, {"id": held["id"]}, token=stranger)
    mine = await gql(RESERVATION_NODE, {"id": held["id"]}, token=owner)
    assert released["data"]["releaseReservation"]["__typename"] == "ReservationNotFound"
    assert seen["data"]["node"] is None
    assert mine["data"]["node"] == {"id": held["id"], "status": "HELD", "quantity": 1}


async def test_checkout_turns_holds_into_an_order(
    factory: Factory, gql: GraphQL, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    _, token = await factory.user()
    room = await factory.product(price="100.00", stock=5)
    tour = await factory.product(price="10.00", stock=5)
    first = (await reserve(gql, token, room, 2))["reservation"]
    second = (await reserve(gql, token, room, 1))["reservation"]
    variables = {
        "input": {
            "idempotencyKey": "checkout",
            "items": [
                {"productId": pid(tour), "quantity": 4},
                {"productId": pid(room), "quantity": 1},
            ],
            "reservationIds": [first["id"], second["id"]],
        }
    }
    body = await gql(CREATE_ORDER, variables, token=token)
    replay = await gql(CREATE_ORDER, variables, token=token)

    order = body["data"]["createOrder"]["order"]
    assert order["total"] == {"amount": "440.00", "currency": "EUR"}
    lines = {item["product"]["id"]: item["quantity"] for item in order["items"]}
    assert lines == {pid(room): 4, pid(tour): 4}
    assert replay["data"]["createOrder"]["created"] is False
    assert replay["data"]["createOrder"]["order"]["id"] == order["id"]
    # The holds' 3 units were taken when reserving; only the extra unit is taken now.
    assert await stock_of(session_factory, room) == 1
    assert await stock_of(session_factory, tour) == 1
    node = await gql(RESERVATION_NODE, {"id": first["id"]}, token=token)
    assert node["data"]["node"]["status"] == "CONFIRMED"
    again = await gql(
        CREATE_ORDER,
        {"input": {"idempotencyKey": "again", "reservationIds": [first["id"]]}},
        token=token,
    )
    assert again["data"]["createOrder"]["__typename"] == "ReservationNotHeld"


async def test_checkout_with_someone_elses_hold_is_reservation_not_found(
    factory: Factory, gql: GraphQL
) -> None:
    _, owner = await factory.user()
    _, thief = await factory.user()
    product = await factory.product(stock=2)
    held = (await reserve(gql, owner, product, 1))["reservation"]
    body = await gql(
        CREATE_ORDER,
        {"input": {"idempotencyKey": "k", "reservationIds": [held["id"]]}},
        token=thief,
    )
    assert body["data"]["createOrder"]["__typename"] == "ReservationNotFound"


async def test_an_expired_hold_cannot_be_used_and_its_stock_comes_back_once(
    factory: Factory,
    gql: GraphQL,
    session_factory: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    _, token = await factory.user()
    product = await factory.product(stock=5)
    held = (await reserve(gql, token, product, 3))["reservation"]
    await expire(session_factory, held["id"])

    node = await gql(RESERVATION_NODE, {"id": held["id"]}, token=token)
    assert node["data"]["node"]["status"] == "EXPIRED"
    checkout = await gql(
        CREATE_ORDER,
        {"input": {"idempotencyKey": "late", "reservationIds": [held["id"]]}},
        token=token,
    )
    assert checkout["data"]["createOrder"]["__typename"] == "ReservationExpired"
    # The hold is lapsed but not yet swept: its units are still out of stock.
    assert await stock_of(session_factory, product) == 2

    outcomes = await asyncio.gather(
        sweep_once(session_factory, settings),
        sweep_once(session_factory, settings),
        sweep_once(session_factory, settings),
        gql(RELEASE, {"id": held["id"]}, token=token),
    )
    assert sorted(outcomes[:3]) == [0, 0, 1]
    assert outcomes[3]["data"]["releaseReservation"]["__typename"] == "ReservationExpired"
    assert await stock_of(session_factory, product) == 5
    assert await sweep_once(session_factory, settings) == 0
    assert await stock_of(session_factory, product) == 5


async def test_many_concurrent_sweepers_give_each_expired_hold_back_once(
    factory: Factory,
    gql: GraphQL,
    session_factory: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    _, token = await factory.user()
    products = await factory.products(4, stock=20)
    holds = []
    for n in range(20):
        holds.append((await reserve(gql, token, products[n % 4], 1 + n % 3))["reservation"])
    live = (await reserve(gql, token, products[0], 1))["reservation"]
    for hold in holds:
        await expire(session_factory, hold["id"])

    swept = await asyncio.gather(*(sweep_once(session_factory, settings) for _ in range(5)))

    assert sum(swept) == 20
    stocks = [await stock_of(session_factory, product) for product in products]
    assert stocks == [19, 20, 20, 20]  # only the live hold is still out
    node = await gql(RESERVATION_NODE, {"id": live["id"]}, token=token)
    assert node["data"]["node"]["status"] == "HELD"


async def test_a_lapsed_hold_stops_counting_against_stock_before_the_sweep(
    factory: Factory, gql: GraphQL, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    _, holder = await factory.user()
    _, buyer = await factory.user()
    product = await factory.product(stock=2)
    held = (await reserve(gql, holder, product, 2))["reservation"]
    refused = await gql(
        CREATE_ORDER,
        {"input": {"idempotencyKey": "k", "items": [{"productId": pid(product), "quantity": 2}]}},
        token=buyer,
    )
    assert refused["data"]["createOrder"]["__typename"] == "InsufficientStock"

    await expire(session_factory, held["id"])
    bought = await gql(
        CREATE_ORDER,
        {"input": {"idempotencyKey": "k2", "items": [{"productId": pid(product), "quantity": 2}]}},
        token=buyer,
    )
    assert bought["data"]["createOrder"]["__typename"] == "CreateOrderSuccess"
    assert await stock_of(session_factory, product) == 0
    release = await gql(RELEASE, {"id": held["id"]}, token=holder)
    assert release["data"]["releaseReservation"]["__typename"] == "ReservationExpired"
    assert await stock_of(session_factory, product) == 0


async def test_unknown_reservation_ids_are_reservation_not_found(
    factory: Factory, gql: GraphQL
) -> None:
    _, token = await factory.user()
    ghost = to_global_id("Reservation", 424_242)
    body = await gql(RELEASE, {"id": ghost}, token=token)
    assert body["data"]["releaseReservation"]["__typename"] == "ReservationNotFound"


RESERVATIONS = """
query Mine($first: Int, $after: String, $status: ReservationStatus) {
  reservations(first: $first, after: $after, status: $status) {
    edges { node { id status quantity product { id stock } } }
    pageInfo { hasNextPage endCursor }
  }
}
"""


async def test_the_viewer_lists_their_own_holds_with_lapsed_ones_as_expired(
    factory: Factory,
    gql: GraphQL,
    session_factory: async_sessionmaker[AsyncSession],
    statements: StatementCounter,
) -> None:
    _, token = await factory.user()
    _, other = await factory.user()
    products = await factory.products(3, stock=10)
    ids = [(await reserve(gql, token, product, 1))["reservation"]["id"] for product in products]
    await reserve(gql, other, products[0], 1)
    await expire(session_factory, ids[0])

    statements.reset()
    everything = await gql(RESERVATIONS, {"first": 2}, token=token)
    assert statements.count == 3, statements.statements  # viewer, reservations, products
    page = everything["data"]["reservations"]
    assert [edge["node"]["id"] for edge in page["edges"]] == [ids[2], ids[1]]
    assert page["pageInfo"]["hasNextPage"] is True
    rest = await gql(
        RESERVATIONS, {"first": 2, "after": page["pageInfo"]["endCursor"]}, token=token
    )
    assert [edge["node"] for edge in rest["data"]["reservations"]["edges"]] == [
        {
            "id": ids[0],
            "status": "EXPIRED",
            "quantity": 1,
            "product": {"id": pid(products[0]), "stock": 8},
        }
    ]
    held = await gql(RESERVATIONS, {"status": "HELD"}, token=token)
    expired = await gql(RESERVATIONS, {"status": "EXPIRED"}, token=token)
    assert [e["node"]["id"] for e in held["data"]["reservations"]["edges"]] == [ids[2], ids[1]]
    assert [e["node"]["id"] for e in expired["data"]["reservations"]["edges"]] == [ids[0]]
    assert error_codes(await gql(RESERVATIONS, {})) == ["UNAUTHENTICATED"]


async def test_holding_an_unknown_product_is_product_not_found(
    factory: Factory, gql: GraphQL
) -> None:
    _, token = await factory.user()
    body = await gql(
        RESERVE,
        {"input": {"productId": to_global_id("Product", 777), "quantity": 1}},
        token=token,
    )
    assert body["data"]["reserveProduct"]["__typename"] == "ProductNotFound"


async def test_an_admin_reads_another_users_hold_but_cannot_release_or_check_it_out(
    factory: Factory, gql: GraphQL, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    _, owner = await factory.user()
    _, admin = await factory.user(is_admin=True)
    product = await factory.product(stock=2)
    held = (await reserve(gql, owner, product, 1))["reservation"]

    seen = await gql(RESERVATION_NODE, {"id": held["id"]}, token=admin)
    released = await gql(RELEASE, {"id": held["id"]}, token=admin)
    checked_out = await gql(
        CREATE_ORDER,
        {"input": {"idempotencyKey": "k", "reservationIds": [held["id"]]}},
        token=admin,
    )

    assert seen["data"]["node"] == {"id": held["id"], "status": "HELD", "quantity": 1}
    # Holds are their owner's to use or release: an admin's write is as if it did not exist.
    assert released["data"]["releaseReservation"]["__typename"] == "ReservationNotFound"
    assert checked_out["data"]["createOrder"]["__typename"] == "ReservationNotFound"
    assert await stock_of(session_factory, product) == 1
    mine = await gql(RELEASE, {"id": held["id"]}, token=owner)
    assert mine["data"]["releaseReservation"]["__typename"] == "ReleaseReservationSuccess"


async def test_checking_out_holds_with_one_key_concurrently_returns_the_one_order(
    factory: Factory, gql: GraphQL, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    _, token = await factory.user()
    product = await factory.product(stock=3)
    held = (await reserve(gql, token, product, 3))["reservation"]
    variables = {"input": {"idempotencyKey": "holds-only", "reservationIds": [held["id"]]}}

    bodies = await asyncio.gather(*(gql(CREATE_ORDER, variables, token=token) for _ in range(8)))

    await assert_one_order_for_all(bodies, session_factory, product)


def _lifetime(payload: dict[str, Any]) -> timedelta:
    reservation = payload["reservation"]
    return datetime.fromisoformat(reservation["expiresAt"]) - datetime.fromisoformat(
        reservation["createdAt"]
    )


@pytest.mark.parametrize(
    "settings",
    [
        Settings(
            environment="test",
            redis_url=None,
            rate_limit_enabled=False,
            hold_ttl_max_seconds=600,
            hold_ttl_default_seconds=300,
        )
    ],
)
async def test_a_hold_without_ttl_lasts_the_configured_default(
    factory: Factory, gql: GraphQL, settings: Settings
) -> None:
    _, token = await factory.user()
    product = await factory.product(stock=5)
    omitted = await reserve(gql, token, product, 1)
    null = await reserve(gql, token, product, 1, ttlSeconds=None)
    explicit = await reserve(gql, token, product, 1, ttlSeconds=600)
    assert _lifetime(omitted) == _lifetime(null) == timedelta(seconds=300)
    assert _lifetime(explicit) == timedelta(seconds=600)


@pytest.mark.parametrize(
    "values",
    [
        {"hold_ttl_default_seconds": 30},
        {"hold_ttl_max_seconds": 600},  # the default 900 beyond the maximum
        {"hold_ttl_min_seconds": 700, "hold_ttl_max_seconds": 600, "hold_ttl_default_seconds": 650},
        {"default_page_size": 101},
    ],
)
def test_inconsistent_limits_are_refused_at_startup(values: dict[str, int]) -> None:
    with pytest.raises(ValidationError):
        Settings(**values)  # type: ignore[arg-type]


def test_a_lapsed_hold_is_expired_whether_or_not_it_was_swept() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def row(status: ReservationStatus, seconds_left: int, **extra: Any) -> Any:
        return SimpleNamespace(
            status=status, expires_at=now + timedelta(seconds=seconds_left), **extra
        )

    held, expired = ReservationStatus.HELD, ReservationStatus.EXPIRED
    confirmed = ReservationStatus.CONFIRMED
    assert effective_status(row(held, 10), now) is held
    assert effective_status(row(held, 0), now) is expired
    assert effective_status(row(confirmed, -10), now) is confirmed
    # The database's verdict, when the row carries it, wins over the caller's clock.
    assert effective_status(row(held, 10, lapsed=True), now) is expired
    assert effective_status(row(held, -10, lapsed=False), now) is held
