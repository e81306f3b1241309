"""The seed generator: deterministic, consistent, and its tokens authenticate."""

from decimal import Decimal

import asyncpg

from db.seed import demo_token, seed_database
from tests.conftest import GraphQL
from tests.databases import libpq_dsn


async def _snapshot(url: str) -> tuple[list[tuple[object, ...]], ...]:
    connection = await asyncpg.connect(libpq_dsn(url))
    try:
        products = await connection.fetch(
            "SELECT id, sku, name, price, currency, stock FROM products ORDER BY id"
        )
        orders = await connection.fetch(
            "SELECT id, user_id, total_amount, currency FROM orders ORDER BY id"
        )
        items = await connection.fetch(
            "SELECT i.order_id, i.quantity, i.unit_price, p.currency FROM order_items i "
            "JOIN products p ON p.id = i.product_id ORDER BY i.id"
        )
        return [tuple(r) for r in products], [tuple(r) for r in orders], [tuple(r) for r in items]
    finally:
        await connection.close()


async def test_seed_is_deterministic_and_consistent(database_url: str, gql: GraphQL) -> None:
    await seed_database(database_url, users=5, products=40, orders=60, seed=7)
    products, orders, items = await _snapshot(database_url)
    await seed_database(database_url, users=5, products=40, orders=60, seed=7, reset=True)
    assert await _snapshot(database_url) == (products, orders, items)

    assert len(products) == 40 and len(orders) == 60
    currencies = {row[4] for row in products}
    assert len(currencies) > 1
    totals: dict[object, Decimal] = {}
    for order_id, quantity, unit_price, currency in items:
        assert currency == next(o[3] for o in orders if o[0] == order_id)  # one currency per order
        totals[order_id] = totals.get(order_id, Decimal(0)) + quantity * unit_price
    assert {o[0]: o[2] for o in orders} == totals
    per_order = [sum(1 for i in items if i[0] == o[0]) for o in orders]
    assert min(per_order) >= 1 and max(per_order) <= 5

    body = await gql("{ me { email isAdmin } }", token=demo_token(7, 1))
    assert body["data"]["me"] == {"email": "admin@example.com", "isAdmin": True}
