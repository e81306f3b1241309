"""The one-statement writes (DB_ONE_STATEMENT_WRITES, services.checkout and
services.reservations) against the reference, the ORM transactions: the same generated
requests of several users, sent to two databases made alike, one app with the setting and
one without, must get the same answers and leave the same rows (orders, items, stock, holds,
outbox payloads), ids included."""

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from core.settings import Settings
from db.engine import create_db_engine, create_session_factory
from gql.app import create_app
from gql.schema.ids import to_global_id
from tests.databases import DatabaseFactory, libpq_dsn
from tests.documents import RELEASE
from tests.factories import Factory

ORDER = """
mutation Create($input: CreateOrderInput!) {
  createOrder(input: $input) {
    __typename
    ... on UserError { message }
    ... on CreateOrderSuccess {
      created
      order { id status total { amount currency }
              items { id quantity unitPrice { amount } subtotal { amount }
                      product { id stock } } }
    }
    ... on InsufficientStock { productId requested available }
    ... on ProductNotFound { productId }
    ... on CurrencyMismatch { currencies }
    ... on IdempotencyKeyReused { idempotencyKey }
    ... on ReservationNotFound { reservationId }
  }
}
"""

HOLD = """
mutation Hold($input: ReserveProductInput!) {
  reserveProduct(input: $input) {
    __typename
    ... on UserError { message }
    ... on ReserveProductSuccess { reservation { id quantity status product { id stock } } }
    ... on InsufficientStock { productId requested available }
    ... on ProductNotFound { productId }
  }
}
"""

# (price, currency, stock): little stock, so that orders and holds run out of it.
PRODUCTS = [
    ("19.99", "EUR", 3),
    ("100.00", "EUR", 5),
    ("0.10", "EUR", 12),
    ("250.50", "EUR", 2),
    ("75.25", "USD", 6),
    ("5000000000.00", "EUR", 4),  # two of these are beyond an order's total
]
UNKNOWN_PRODUCT = 999_999
USERS = 3
REQUESTS = 60

# Compared as read, ordered by id: every column but the timestamps.
STATE = {
    "products": "SELECT id, stock FROM products ORDER BY id",
    "orders": (
        "SELECT id, user_id, status, total_amount::text, currency, idempotency_key "
        "FROM orders ORDER BY id"
    ),
    "order_items": (
        "SELECT id, order_id, product_id, quantity, unit_price::text FROM order_items ORDER BY id"
    ),
    "reservations": (
        "SELECT id, user_id, product_id, order_id, quantity, status FROM reservations ORDER BY id"
    ),
    "notifications": (
        "SELECT id, kind, payload::text, correlation_id, trace_context::text, status "
        "FROM notifications ORDER BY id"
    ),
}


@dataclass
class Side:
    """One database and the app serving it, with its users' tokens."""

    url: str
    client: httpx.AsyncClient
    tokens: list[str]
    product_ids: list[int]

    async def send(self, step: "Step") -> dict[str, Any]:
        response = await self.client.post(
            "/graphql",
            json={"query": step.document, "variables": step.variables},
            headers={
                "Authorization": f"Bearer {self.tokens[step.user]}",
                "X-Correlation-ID": step.correlation_id,
            },
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def expire_hold(self, reservation_id: int) -> None:
        await self.execute(
            "UPDATE reservations SET expires_at = now() - interval '1 second' WHERE id = $1",
            reservation_id,
        )

    async def execute(self, sql: str, *args: Any) -> None:
        connection = await asyncpg.connect(libpq_dsn(self.url))
        try:
            await connection.execute(sql, *args)
        finally:
            await connection.close()

    async def state(self) -> dict[str, list[tuple[Any, ...]]]:
        connection = await asyncpg.connect(libpq_dsn(self.url))
        try:
            return {
                name: [tuple(row) for row in await connection.fetch(sql)]
                for name, sql in STATE.items()
            }
        finally:
            await connection.close()


@dataclass
class Step:
    user: int
    document: str
    variables: dict[str, Any]
    correlation_id: str
    expire: int | None = None  # a hold's row id to move past its deadline first


def generated_steps(seed: int, product_ids: list[int]) -> list[Step]:
    """Orders of one to three lines (some on an unknown product, in two currencies, beyond
    the stock or the largest total), the same key again with the same or another payload,
    holds, checkouts of holds (some lapsed), and releases: for several users."""
    rng = random.Random(seed)
    orders: list[tuple[int, dict[str, Any]]] = []  # (user, input)
    holds: list[tuple[int, int]] = []  # (user, reservation row id): maybe held, maybe not
    steps: list[Step] = []
    next_hold = 1
    for n in range(REQUESTS):
        user = rng.randrange(USERS)
        correlation_id = f"diff-{seed}-{n}"
        roll = rng.random()
        if roll < 0.45:
            pool = [*product_ids, UNKNOWN_PRODUCT] if rng.random() < 0.1 else product_ids
            chosen = rng.sample(pool, rng.randint(1, 3))
            order = {
                "idempotencyKey": f"k{seed}-{n}",
                "items": [
                    {"productId": to_global_id("Product", pid), "quantity": rng.randint(1, 3)}
                    for pid in chosen
                ],
            }
            orders.append((user, order))
            steps.append(Step(user, ORDER, {"input": order}, correlation_id))
        elif roll < 0.6 and orders:
            owner, order = rng.choice(orders)
            again = dict(order)
            if rng.random() < 0.4:  # another payload under the same key
                again["items"] = [{**order["items"][0], "quantity": 4}]
            steps.append(Step(owner, ORDER, {"input": again}, correlation_id))
        elif roll < 0.8:
            hold = {
                "productId": to_global_id("Product", rng.choice(product_ids)),
                "quantity": rng.randint(1, 3),
                "ttlSeconds": 600,
            }
            steps.append(Step(user, HOLD, {"input": hold}, correlation_id))
            # Its row id if it is taken: a refused hold inserts no row on either side.
            holds.append((user, next_hold))
            next_hold += 1
        elif roll < 0.92 and holds:
            owner, hold_id = rng.choice(holds)
            order = {
                "idempotencyKey": f"k{seed}-{n}",
                "items": [],
                "reservationIds": [to_global_id("Reservation", hold_id)],
            }
            if rng.random() < 0.5:
                order["items"] = [
                    {"productId": to_global_id("Product", rng.choice(product_ids)), "quantity": 1}
                ]
            expire = hold_id if rng.random() < 0.3 else None
            steps.append(Step(owner, ORDER, {"input": order}, correlation_id, expire))
        elif holds:
            owner, hold_id = rng.choice(holds)
            steps.append(
                Step(
                    owner,
                    RELEASE,
                    {"id": to_global_id("Reservation", hold_id)},
                    correlation_id,
                    expire=hold_id if rng.random() < 0.3 else None,
                )
            )
    return steps


@pytest.fixture
async def sides(databases: DatabaseFactory) -> AsyncIterator[tuple[Side, Side]]:
    """Two databases with the same users and products (same ids), an app on each: the first
    with one-statement writes, the second without."""
    made: list[Side] = []
    closers: list[Any] = []
    try:
        for one_statement in (True, False):
            url = await databases.create()
            settings = Settings(
                environment="test",
                redis_url=None,
                rate_limit_enabled=False,
                db_one_statement_writes=one_statement,
            )
            engine = create_db_engine(url, settings)
            closers.append(engine.dispose)
            factory = Factory(create_session_factory(engine))
            tokens = [(await factory.user())[1] for _ in range(USERS)]
            product_ids = [
                (await factory.product(price=price, currency=currency, stock=stock)).id
                for price, currency, stock in PRODUCTS
            ]
            app = create_app(settings, database_url=url)
            lifespan = app.router.lifespan_context(app)
            await lifespan.__aenter__()
            closers.append(lambda lifespan=lifespan: lifespan.__aexit__(None, None, None))
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://testserver"
            )
            closers.append(client.aclose)
            made.append(Side(url, client, tokens, product_ids))
        yield made[0], made[1]
    finally:
        for close in reversed(closers):
            await close()
        for side in made:
            await databases.drop(side.url)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_one_statement_writes_answer_and_write_as_the_transactions_do(
    sides: tuple[Side, Side], seed: int
) -> None:
    one_statement, reference = sides
    assert one_statement.product_ids == reference.product_ids
    product_ids = one_statement.product_ids
    kinds: set[str] = set()
    for step in generated_steps(seed, product_ids):
        if step.expire is not None:
            await one_statement.expire_hold(step.expire)
            await reference.expire_hold(step.expire)
        got = await one_statement.send(step)
        expected = await reference.send(step)
        assert got == expected, (step, got, expected)
        kinds.update(
            payload["__typename"]
            for payload in (got.get("data") or {}).values()
            if payload is not None
        )
    assert await one_statement.state() == await reference.state()
    # The generated requests reached the plain successes and the cases the statement leaves
    # to the transaction.
    assert {"CreateOrderSuccess", "ReserveProductSuccess", "InsufficientStock"} <= kinds, kinds
