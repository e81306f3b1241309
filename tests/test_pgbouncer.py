"""Issue 15: the service behind PgBouncer in transaction mode, by one setting (DB_PGBOUNCER).

A real PgBouncer (Debian's package; skipped, saying why, where it is not installed) pools a
handful of server connections for two instances of two gunicorn workers each, sharing one
Redis. Order history, product reads and a storm of createOrder go through it at once. Without
the setting about two thirds of such requests failed (named prepared statements met on the
wrong server connection, or a name taken twice), and some answers were built from another
statement's rows; so every answer is checked for being right, not only for having no error.
Afterwards no prepared statement is left on PgBouncer's server connections, and stock is
conserved: stock + units sold == initial stock."""

import asyncio
import itertools
import random
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy import func, select

from core.settings import Settings
from db.engine import create_db_engine, driver_connect_args
from db.models import OrderItem, Product
from tests.databases import libpq_dsn
from tests.deployment import gunicorn_instances, pgbouncer
from tests.edge_support import REDIS_URL, delete_prefix
from tests.factories import Factory

SEED = 15
USERS = 6
ORDERS_PER_USER = 4
HOT_PRODUCTS = 3
INITIAL_STOCK = 40
STORM = 120  # createOrder requests: more units asked for than there are
READS = 160  # order history and product reads, interleaved with the storm
CONCURRENCY = 24

ORDER_HISTORY = """
query History {
  me { email }
  orders(first: 20) {
    edges { node { id status total { amount currency } user { email }
                   items { quantity product { id name } } } }
  }
}
"""
PRODUCTS = """
query Products { products(first: 50, orderBy: PRICE_ASC) { edges { node { id name stock } } } }
"""
PRODUCT = "query One($id: ID!) { product(id: $id) { id name price { amount currency } } }"
CREATE_ORDER = """
mutation Create($input: CreateOrderInput!) {
  createOrder(input: $input) {
    __typename
    ... on CreateOrderSuccess { created order { id items { quantity product { id } } } }
    ... on InsufficientStock { productId requested available }
  }
}
"""


def test_one_setting_reaches_both_statement_caches() -> None:
    """SQLAlchemy's adapter and asyncpg (db.compiled's reads) cache statements apart; one
    setting sizes both, and with none cached no statement gets a name on the server."""
    default = driver_connect_args(Settings(db_statement_cache_size=300))
    assert default["statement_cache_size"] == default["prepared_statement_cache_size"] == 300
    assert "prepared_statement_name_func" not in default
    for settings in (Settings(db_pgbouncer=True), Settings(db_statement_cache_size=0)):
        args = driver_connect_args(settings)
        assert args["statement_cache_size"] == args["prepared_statement_cache_size"] == 0
        assert args["prepared_statement_name_func"]() == ""  # asyncpg's unnamed statement
        # PgBouncer refuses startup parameters it does not know; unnamed statements have no
        # plan to reuse anyway.
        assert "plan_cache_mode" not in args["server_settings"]


async def test_prepared_statements_are_planned_as_the_setting_says(database_url: str) -> None:
    """A lookup by `id = ANY($1)` keeps one generic plan, instead of the plan made again per
    execution that PostgreSQL's `auto` chooses for it once the table is big enough to make a
    guess of ten keys look dear; `auto` stays available."""
    for mode in ("force_generic_plan", "auto"):
        engine = create_db_engine(database_url, Settings(db_plan_cache_mode=mode))
        try:
            async with engine.connect() as connection:
                raw = await connection.get_raw_connection()
                driver = raw.driver_connection
                assert await driver.fetchval("SHOW plan_cache_mode") == mode
                statement = await driver.prepare("SELECT id FROM products WHERE id = ANY($1)")
                for _ in range(8):
                    await statement.fetch([1])
                plans = await driver.fetchrow(
                    "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                    " WHERE statement = $1",
                    statement.get_query(),
                )
                if mode == "force_generic_plan":
                    assert (plans["generic_plans"], plans["custom_plans"]) == (8, 0)
                else:
                    assert plans["custom_plans"] >= 5  # auto tries custom plans first
        finally:
            await engine.dispose()


async def test_two_instances_behind_pgbouncer_in_transaction_mode_answer_right_and_conserve_stock(
    database_url: str, factory: Factory, tmp_path: Path
) -> None:
    users = [await factory.user() for _ in range(USERS)]
    stocked = await factory.products(5, stock=1000)
    for user, _token in users:
        for n in range(ORDERS_PER_USER):
            await factory.order(user, [(stocked[n % 5], 1), (stocked[(n + 1) % 5], 2)])
    hot = await factory.products(HOT_PRODUCTS, stock=INITIAL_STOCK)
    prefix = f"test-pgbouncer-{uuid.uuid4().hex[:12]}"

    async with pgbouncer(database_url, pool_size=4) as bouncer:
        env = {
            "DATABASE_URL": bouncer.url,
            "DB_PGBOUNCER": "true",
            # Subscriptions' LISTEN needs a session of its own: the server itself, as deployed.
            "EVENTS_DATABASE_URL": database_url,
            "WEB_CONCURRENCY": "2",
            "DB_POOL_SIZE": "6",  # 4 workers x 6 client connections over 4 server connections
            "REDIS_URL": REDIS_URL,
            "REDIS_KEY_PREFIX": prefix,
            "RATE_LIMIT_DEFAULT": "100000/minute",
            "RATE_LIMIT_FIELDS": '{"createOrder": "100000/minute"}',
            "ACCESS_LOG": "false",
            "LOG_LEVEL": "WARNING",
        }
        try:
            async with gunicorn_instances(2, env=env, log_dir=tmp_path) as instances:
                clients = [httpx.AsyncClient(base_url=i.url, timeout=30) for i in instances]
                try:
                    problems = await _drive(clients, users, hot_names={p.name for p in hot})
                finally:
                    for client in clients:
                        await client.aclose()
                logs = "\n".join(instance.log_text() for instance in instances)
            leftover = await _prepared_statements_left(bouncer.url)
        finally:
            await delete_prefix(prefix)

    assert problems == [], problems[:5]
    assert " ERROR " not in logs and '"level": "ERROR"' not in logs, logs[-3000:]
    assert leftover == 0
    async with factory.session_factory() as session:
        for product in hot:
            stock = await session.scalar(select(Product.stock).where(Product.id == product.id))
            sold = await session.scalar(
                select(func.coalesce(func.sum(OrderItem.quantity), 0)).where(
                    OrderItem.product_id == product.id
                )
            )
            assert stock is not None and stock >= 0
            assert stock + sold == INITIAL_STOCK


async def _drive(
    clients: list[httpx.AsyncClient],
    users: list[tuple[Any, str]],
    *,
    hot_names: set[str],
) -> list[str]:
    """The workload, spread over both instances; a list of what went wrong (empty: nothing)."""
    rng = random.Random(SEED)
    spread = itertools.cycle(clients)
    catalogue = await _post(next(spread), PRODUCTS)
    assert "errors" not in catalogue, catalogue
    products = {edge["node"]["name"]: edge["node"]["id"] for edge in _edges(catalogue)}
    hot_ids = [products[name] for name in sorted(hot_names)]
    problems: list[str] = []
    jobs: list[tuple[str, httpx.AsyncClient, Any]] = []
    for n in range(STORM):
        jobs.append(("order", next(spread), (rng.choice(users), n, rng.sample(hot_ids, 2))))
    for _ in range(READS):
        kind = rng.choice(["history", "history", "products", "product"])
        chosen = rng.choice(sorted(products.items())) if kind == "product" else rng.choice(users)
        jobs.append((kind, next(spread), chosen))
    rng.shuffle(jobs)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def run(kind: str, client: httpx.AsyncClient, arguments: Any) -> None:
        async with gate:
            try:
                problem = await _check(kind, client, arguments, products)
            except Exception as error:  # a transport failure is a problem like any other
                problem = f"{kind}: {error!r}"
            if problem:
                problems.append(problem)

    await asyncio.gather(*(run(*job) for job in jobs))
    return problems


async def _check(
    kind: str, client: httpx.AsyncClient, arguments: Any, products: dict[str, str]
) -> str | None:
    """What is wrong with one request's answer, or None."""
    if kind == "order":
        return await _check_order(client, *arguments)
    if kind == "history":
        return await _check_history(client, *arguments)
    if kind == "products":
        body = await _post(client, PRODUCTS)
        names = {edge["node"]["name"]: edge["node"]["id"] for edge in _edges(body)}
        return None if names == products else f"products: {body}"
    name, product_id = arguments
    body = await _post(client, PRODUCT, {"id": product_id})
    found = (body.get("data") or {}).get("product") or {}
    return None if found.get("name") == name else f"product {name}: {body}"


async def _check_order(
    client: httpx.AsyncClient, viewer: tuple[Any, str], n: int, chosen: list[str]
) -> str | None:
    items = [{"productId": product, "quantity": 1 + (n + i) % 3} for i, product in
             enumerate(chosen)]  # fmt: skip
    body = await _post(
        client,
        CREATE_ORDER,
        {"input": {"items": items, "idempotencyKey": f"storm-{n}"}},
        token=viewer[1],
    )
    answer = (body.get("data") or {}).get("createOrder") or {}
    if answer.get("__typename") == "InsufficientStock":
        return None
    if answer.get("__typename") != "CreateOrderSuccess":
        return f"order {n}: {body}"
    got = {(i["product"]["id"], i["quantity"]) for i in answer["order"]["items"]}
    want = {(i["productId"], i["quantity"]) for i in items}
    return None if got == want else f"order {n}: items {got} != {want}"


async def _check_history(client: httpx.AsyncClient, user: Any, token: str) -> str | None:
    body = await _post(client, ORDER_HISTORY, token=token)
    if "errors" in body:
        return f"history: {body['errors']}"
    data = body["data"]
    orders = [edge["node"] for edge in data["orders"]["edges"]]
    if data["me"]["email"] != user.email:
        return f"history: me is {data['me']['email']}, not {user.email}"
    # The seeded orders at least (storm orders may have joined them), all the viewer's.
    if len(orders) < ORDERS_PER_USER or any(o["user"]["email"] != user.email for o in orders):
        return f"history of {user.email}: {orders}"
    return None


async def _post(
    client: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    token: str | None = None,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.post(
        "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
    )
    if response.status_code != 200:
        return {"errors": [{"status": response.status_code, "body": response.text[:300]}]}
    body: dict[str, Any] = response.json()
    return body


def _edges(body: dict[str, Any]) -> list[dict[str, Any]]:
    edges: list[dict[str, Any]] = body["data"]["products"]["edges"]
    return edges


async def _prepared_statements_left(url: str) -> int:
    """Prepared statements on the server connections PgBouncer hands out: each query of its
    own lands on one of them, so a few tries see most of its small pool."""
    left = 0
    for _ in range(8):
        connection = await asyncpg.connect(libpq_dsn(url), statement_cache_size=0)
        try:
            left += await connection.fetchval("SELECT count(*) FROM pg_prepared_statements")
        finally:
            await connection.close()
    return left
