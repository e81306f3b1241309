"""Orders through the GraphQL API: no oversell or deadlock under real concurrency, idempotency,
cancellation exactly once, one transaction per mutation field, typed and input errors."""

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.settings import Settings
from db.models import Notification, Order, OrderItem, OrderStatus, Product
from gql.schema.ids import to_global_id
from tests.conftest import GraphQL, StatementCounter, error_codes
from tests.documents import CANCEL_ORDER
from tests.factories import Factory

CREATE_ORDER = """
mutation Create($input: CreateOrderInput!) {
  createOrder(input: $input) {
    __typename
    ... on UserError { message }
    ... on CreateOrderSuccess {
      created
      order { id status total { amount currency }
              items { quantity unitPrice { amount } product { id } } }
    }
    ... on InsufficientStock { productId requested available }
    ... on ProductNotFound { productId }
    ... on CurrencyMismatch { currencies }
    ... on IdempotencyKeyReused { idempotencyKey }
  }
}
"""


@pytest.fixture(params=[True, False], ids=["one-statement-writes", "transactions"])
def settings(request: pytest.FixtureRequest) -> Settings:
    """Every test here runs with the one-statement writes (the default) and without them,
    the ORM transactions they are the fast path of (tests/test_one_statement_writes.py)."""
    # Enough connections for a hundred concurrent requests to queue for, not fail on.
    return Settings(
        environment="test",
        redis_url=None,
        db_pool_size=20,
        db_max_overflow=30,
        db_pool_timeout=60,
        db_one_statement_writes=request.param,
        rate_limit_enabled=False,  # a hundred orders of one user a second: no limit's business
    )


def pid(product: Product) -> str:
    return to_global_id("Product", product.id)


def order_input(key: str, *lines: tuple[Product, int]) -> dict[str, Any]:
    return {
        "input": {
            "idempotencyKey": key,
            "items": [{"productId": pid(product), "quantity": qty} for product, qty in lines],
        }
    }


async def stock_of(session_factory: async_sessionmaker[AsyncSession], product: Product) -> int:
    async with session_factory() as session:
        value = await session.scalar(select(Product.stock).where(Product.id == product.id))
        assert value is not None
        return value


async def assert_one_order_for_all(
    bodies: list[dict[str, Any]],
    session_factory: async_sessionmaker[AsyncSession],
    product: Product,
) -> None:
    """Concurrent requests with one idempotency key: every one got the same single order,
    which took the product's whole stock once."""
    outcomes = [body["data"]["createOrder"] for body in bodies]
    assert {o["__typename"] for o in outcomes} == {"CreateOrderSuccess"}, outcomes
    assert len({o["order"]["id"] for o in outcomes}) == 1
    assert sum(o["created"] for o in outcomes) == 1
    assert await stock_of(session_factory, product) == 0
    async with session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(Order)) == 1


async def units_sold(session_factory: async_sessionmaker[AsyncSession], product: Product) -> int:
    async with session_factory() as session:
        statement = (
            select(func.coalesce(func.sum(OrderItem.quantity), 0))
            .join(Order, Order.id == OrderItem.order_id)
            .where(OrderItem.product_id == product.id, Order.status != OrderStatus.CANCELLED)
        )
        return int(await session.scalar(statement) or 0)


async def test_concurrent_orders_never_oversell(
    factory: Factory,
    gql: GraphQL,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    _, token = await factory.user()
    product = await factory.product(stock=10)

    started = time.perf_counter()
    bodies = await asyncio.gather(
        *(
            gql(CREATE_ORDER, order_input(f"race-{n}", (product, 1)), token=token)
            for n in range(100)
        )
    )
    duration = time.perf_counter() - started

    assert all("errors" not in body for body in bodies), [b for b in bodies if "errors" in b][:1]
    outcomes = [body["data"]["createOrder"] for body in bodies]
    successes = [o for o in outcomes if o["__typename"] == "CreateOrderSuccess"]
    failures = [o for o in outcomes if o["__typename"] == "InsufficientStock"]
    final_stock = await stock_of(session_factory, product)
    sold = await units_sold(session_factory, product)
    print(
        f"\noversell race: 100 concurrent createOrder for stock 10: {len(successes)} succeeded, "
        f"{len(failures)} InsufficientStock, final stock {final_stock}, units sold {sold}, "
        f"{duration:.2f}s"
    )
    assert len(successes) == 10
    assert len(failures) == 90
    assert all(f["requested"] == 1 and f["available"] == 0 for f in failures)
    assert final_stock == 0
    assert sold == 10


async def test_orders_locking_products_in_opposite_orders_never_deadlock(
    factory: Factory,
    gql: GraphQL,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    _, token = await factory.user()
    p1, p2 = await factory.products(2, stock=1000)
    requests = []
    for n in range(50):
        requests.append(gql(CREATE_ORDER, order_input(f"ab-{n}", (p1, 1), (p2, 2)), token=token))
        requests.append(gql(CREATE_ORDER, order_input(f"ba-{n}", (p2, 2), (p1, 1)), token=token))
    bodies = await asyncio.gather(*requests)

    assert [body.get("errors") for body in bodies] == [None] * 100
    kinds = {body["data"]["createOrder"]["__typename"] for body in bodies}
    assert kinds == {"CreateOrderSuccess"}
    assert await stock_of(session_factory, p1) == 1000 - 100
    assert await stock_of(session_factory, p2) == 1000 - 200


async def test_same_idempotency_key_sent_concurrently_returns_the_one_order(
    factory: Factory,
    gql: GraphQL,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    _, token = await factory.user()
    # Exactly the stock one order takes: a retry that checked the stock again before finding
    # the first order would be told InsufficientStock.
    product = await factory.product(stock=3)
    variables = order_input("checkout-42", (product, 3))

    bodies = await asyncio.gather(*(gql(CREATE_ORDER, variables, token=token) for _ in range(8)))

    await assert_one_order_for_all(bodies, session_factory, product)


async def test_same_idempotency_key_with_another_payload_is_refused(
    factory: Factory, gql: GraphQL, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    _, token = await factory.user()
    product = await factory.product(stock=10)
    first = await gql(CREATE_ORDER, order_input("k1", (product, 1)), token=token)
    again = await gql(CREATE_ORDER, order_input("k1", (product, 1)), token=token)
    other = await gql(CREATE_ORDER, order_input("k1", (product, 2)), token=token)

    assert first["data"]["createOrder"]["created"] is True
    assert again["data"]["createOrder"]["created"] is False
    assert again["data"]["createOrder"]["order"] == first["data"]["createOrder"]["order"]
    assert other["data"]["createOrder"]["__typename"] == "IdempotencyKeyReused"
    assert other["data"]["createOrder"]["idempotencyKey"] == "k1"
    assert await stock_of(session_factory, product) == 9


async def test_idempotency_keys_belong_to_one_user(factory: Factory, gql: GraphQL) -> None:
    _, alice = await factory.user()
    _, bob = await factory.user()
    product = await factory.product(stock=10)
    a = await gql(CREATE_ORDER, order_input("same", (product, 1)), token=alice)
    b = await gql(CREATE_ORDER, order_input("same", (product, 2)), token=bob)
    assert a["data"]["createOrder"]["created"] is True
    assert b["data"]["createOrder"]["created"] is True
    assert a["data"]["createOrder"]["order"]["id"] != b["data"]["createOrder"]["order"]["id"]


async def test_order_captures_prices_and_total_and_announces_itself(
    factory: Factory, gql: GraphQL, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    _, token = await factory.user()
    room = await factory.product(price="120.50", stock=5)
    tour = await factory.product(price="19.99", stock=5)
    body = await gql(CREATE_ORDER, order_input("k", (room, 2), (tour, 3)), token=token)

    order = body["data"]["createOrder"]["order"]
    assert order["status"] == "CONFIRMED"
    assert order["total"] == {"amount": "300.97", "currency": "EUR"}
    assert sorted(
        (i["product"]["id"], i["quantity"], i["unitPrice"]["amount"]) for i in order["items"]
    ) == sorted([(pid(room), 2, "120.50"), (pid(tour), 3, "19.99")])
    async with session_factory() as session:
        notes = (await session.execute(select(Notification))).scalars().all()
    assert [n.kind for n in notes] == ["order.created"]
    assert notes[0].payload["total"] == {"amount": "300.97", "currency": "EUR"}


async def test_products_in_two_currencies_are_a_currency_mismatch(
    factory: Factory, gql: GraphQL, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    _, token = await factory.user()
    eur = await factory.product(currency="EUR", stock=5)
    usd = await factory.product(currency="USD", stock=5)
    body = await gql(CREATE_ORDER, order_input("k", (eur, 1), (usd, 1)), token=token)
    assert body["data"]["createOrder"]["__typename"] == "CurrencyMismatch"
    assert body["data"]["createOrder"]["currencies"] == ["EUR", "USD"]
    assert await stock_of(session_factory, eur) == 5


async def test_unknown_product_is_product_not_found_and_takes_nothing(
    factory: Factory, gql: GraphQL, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    _, token = await factory.user()
    product = await factory.product(stock=5)
    ghost = to_global_id("Product", 999_999)
    variables = order_input("k", (product, 1))
    variables["input"]["items"].append({"productId": ghost, "quantity": 1})
    body = await gql(CREATE_ORDER, variables, token=token)
    assert body["data"]["createOrder"] == {
        "__typename": "ProductNotFound",
        "message": f"product {ghost} does not exist",
        "productId": ghost,
    }
    assert await stock_of(session_factory, product) == 5


async def test_concurrent_cancels_give_stock_back_once(
    factory: Factory, gql: GraphQL, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    _, token = await factory.user()
    product = await factory.product(stock=10)
    created = await gql(CREATE_ORDER, order_input("k", (product, 4)), token=token)
    order_id = created["data"]["createOrder"]["order"]["id"]

    bodies = await asyncio.gather(
        *(gql(CANCEL_ORDER, {"id": order_id}, token=token) for _ in range(6))
    )

    kinds = sorted(body["data"]["cancelOrder"]["__typename"] for body in bodies)
    assert kinds == ["CancelOrderSuccess"] + ["OrderNotCancellable"] * 5
    assert await stock_of(session_factory, product) == 10
    async with session_factory() as session:
        kinds_written = (await session.execute(select(Notification.kind))).scalars().all()
    assert sorted(kinds_written) == ["order.cancelled", "order.created"]


async def test_another_users_order_cannot_be_cancelled_nor_seen(
    factory: Factory, gql: GraphQL, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    _, owner = await factory.user()
    _, stranger = await factory.user()
    _, admin = await factory.user(is_admin=True)
    product = await factory.product(stock=10)
    created = await gql(CREATE_ORDER, order_input("k", (product, 4)), token=owner)
    order_id = created["data"]["createOrder"]["order"]["id"]

    refused = await gql(CANCEL_ORDER, {"id": order_id}, token=stranger)
    missing = await gql(CANCEL_ORDER, {"id": to_global_id("Order", 999_999)}, token=stranger)
    assert refused["data"]["cancelOrder"]["__typename"] == "OrderNotFound"
    # The same answer as for an order that does not exist: nothing is revealed.
    assert refused["data"]["cancelOrder"]["message"].endswith("does not exist")
    assert missing["data"]["cancelOrder"]["__typename"] == "OrderNotFound"
    assert await stock_of(session_factory, product) == 6

    by_admin = await gql(CANCEL_ORDER, {"id": order_id}, token=admin)
    assert by_admin["data"]["cancelOrder"]["order"]["status"] == "CANCELLED"
    assert await stock_of(session_factory, product) == 10


async def test_mutations_need_a_token(factory: Factory, gql: GraphQL) -> None:
    product = await factory.product()
    body = await gql(CREATE_ORDER, order_input("k", (product, 1)))
    assert error_codes(body) == ["UNAUTHENTICATED"]
    body = await gql(CREATE_ORDER, order_input("k", (product, 1)), token="bk_not_a_token")
    assert error_codes(body) == ["UNAUTHENTICATED"]


TWO_MUTATIONS = """
mutation Two($first: CreateOrderInput!, $second: CreateOrderInput!) {
  first: createOrder(input: $first) { __typename ... on CreateOrderSuccess { order { id } } }
  second: createOrder(input: $second) { __typename ... on UserError { message } }
}
"""


async def test_a_failing_mutation_does_not_undo_the_one_before_it(
    factory: Factory, gql: GraphQL, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    _, token = await factory.user()
    product = await factory.product(stock=3)
    other = await factory.product(stock=3)
    body = await gql(
        TWO_MUTATIONS,
        {
            # The second takes `other` first, then fails on `product`: all of it is undone.
            "first": order_input("one", (product, 2))["input"],
            "second": order_input("two", (other, 1), (product, 2))["input"],
        },
        token=token,
    )
    assert "errors" not in body
    assert body["data"]["first"]["__typename"] == "CreateOrderSuccess"
    assert body["data"]["second"]["__typename"] == "InsufficientStock"
    assert await stock_of(session_factory, product) == 1
    assert await stock_of(session_factory, other) == 3


async def test_a_failed_mutation_leaves_the_session_usable_for_the_next(
    factory: Factory, gql: GraphQL, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    _, token = await factory.user()
    product = await factory.product(stock=1)
    body = await gql(
        """mutation Two($first: CreateOrderInput!, $second: CreateOrderInput!) {
          first: createOrder(input: $first) { __typename }
          second: createOrder(input: $second) { __typename }
          }""",
        {
            "first": order_input("one", (product, 5))["input"],
            "second": order_input("two", (product, 1))["input"],
        },
        token=token,
    )
    assert body == {
        "data": {
            "first": {"__typename": "InsufficientStock"},
            "second": {"__typename": "CreateOrderSuccess"},
        }
    }
    assert await stock_of(session_factory, product) == 0


async def test_a_bad_input_after_a_success_keeps_the_success_committed(
    factory: Factory, gql: GraphQL, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    _, token = await factory.user()
    product = await factory.product(stock=3)
    body = await gql(
        TWO_MUTATIONS,
        {
            "first": order_input("one", (product, 1))["input"],
            "second": order_input("two", (product, 0))["input"],
        },
        token=token,
    )
    # Only the failing field is null: the first one's result, committed, stays visible.
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert body["data"]["first"]["__typename"] == "CreateOrderSuccess"
    assert body["data"]["second"] is None
    assert await stock_of(session_factory, product) == 2
    assert await units_sold(session_factory, product) == 1


def _items(n: int, quantity: int = 1) -> list[dict[str, Any]]:
    return [{"productId": to_global_id("Product", i + 1), "quantity": quantity} for i in range(n)]


@pytest.mark.parametrize(
    ("input_", "fragment"),
    [
        ({"idempotencyKey": "k", "items": _items(1, 0)}, "quantity"),
        ({"idempotencyKey": "k", "items": _items(1, -3)}, "quantity"),
        ({"idempotencyKey": "k", "items": _items(1, 101)}, "quantity"),
        ({"idempotencyKey": "k", "items": []}, "at least one"),
        ({"idempotencyKey": "k"}, "at least one"),
        ({"idempotencyKey": "k", "items": _items(51)}, "at most"),
        ({"idempotencyKey": "k", "items": _items(1) + _items(1)}, "only once"),
        ({"idempotencyKey": "k", "items": [{"productId": "nope!", "quantity": 1}]}, "ID"),
        (
            {
                "idempotencyKey": "k",
                "items": [{"productId": to_global_id("Order", 1), "quantity": 1}],
            },
            "not a Product",
        ),
        ({"idempotencyKey": "", "items": _items(1)}, "idempotencyKey"),
        ({"idempotencyKey": "   ", "items": _items(1)}, "idempotencyKey"),
        ({"idempotencyKey": "k" * 129, "items": _items(1)}, "idempotencyKey"),
        ({"idempotencyKey": "k", "reservationIds": ["x"]}, "ID"),
        # Sizes are checked before any ID is decoded, by the service's one check.
        (
            {"idempotencyKey": "k", "items": [{"productId": "?", "quantity": 1}] * 51},
            "items may list at most 50 entries",
        ),
        ({"idempotencyKey": "k", "reservationIds": ["?"] * 51}, "reservationIds may list at most"),
        (
            {"idempotencyKey": "k", "items": [{"productId": "UHJvZHVjdDox", "quantity": 2**31}]},
            "Int",
        ),
    ],
)
async def test_bad_order_input_is_bad_user_input(
    factory: Factory, gql: GraphQL, input_: dict[str, Any], fragment: str
) -> None:
    _, token = await factory.user()
    await factory.product()
    body = await gql(CREATE_ORDER, {"input": input_}, token=token)
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    assert fragment in body["errors"][0]["message"]


async def test_create_order_runs_the_same_statements_for_1_and_5_items(
    factory: Factory, gql: GraphQL, statements: StatementCounter, settings: Settings
) -> None:
    """Pinned like Saleor's benchmarks: a new statement per item would be an N+1 in writes."""
    _, token = await factory.user()
    products = await factory.products(5, stock=10)

    statements.reset()
    one = await gql(CREATE_ORDER, order_input("one", (products[0], 1)), token=token)
    for_one = list(statements.statements)

    statements.reset()
    five = await gql(CREATE_ORDER, order_input("five", *((p, 1) for p in products)), token=token)
    for_five = list(statements.statements)

    assert one["data"]["createOrder"]["__typename"] == "CreateOrderSuccess"
    assert len(five["data"]["createOrder"]["order"]["items"]) == 5
    if settings.db_one_statement_writes:
        # viewer, the one call that locks, checks and writes (no BEGIN, no COMMIT: it is its
        # own transaction), then the response's products in one loader batch.
        assert len(for_one) == len(for_five) == 3, for_five
        assert "place_order_from_stock" in for_five[1], for_five[1]
        assert statements.transaction_control == []
        return
    # viewer, idempotency-key lock, idempotency lookup, product locks, then one statement for
    # the order, the stock, the items and the outbox row (was four); then the response's
    # products in one loader batch.
    assert len(for_one) == len(for_five) == 6, for_five
    assert for_five[4].lstrip().startswith("WITH taken AS"), for_five[4]
    assert statements.transaction_control == ["BEGIN;", "COMMIT;"], statements.transaction_control


async def test_cancel_order_runs_the_same_statements_for_1_and_5_items(
    factory: Factory, gql: GraphQL, statements: StatementCounter
) -> None:
    _, token = await factory.user()
    products = await factory.products(5, stock=10)
    one = await gql(CREATE_ORDER, order_input("one", (products[0], 1)), token=token)
    five = await gql(CREATE_ORDER, order_input("five", *((p, 1) for p in products)), token=token)

    counts = []
    for body in (one, five):
        statements.reset()
        cancelled = await gql(
            CANCEL_ORDER, {"id": body["data"]["createOrder"]["order"]["id"]}, token=token
        )
        assert cancelled["data"]["cancelOrder"]["__typename"] == "CancelOrderSuccess"
        counts.append(statements.count)
    # viewer, order, items, product locks, status update, stock update, outbox insert.
    assert counts == [7, 7], statements.statements


async def test_a_total_beyond_the_money_column_is_bad_user_input(
    factory: Factory, gql: GraphQL, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    _, token = await factory.user()
    jet = await factory.product(price="9999999999.99", stock=5)
    body = await gql(CREATE_ORDER, order_input("k", (jet, 2)), token=token)
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert await stock_of(session_factory, jet) == 5
