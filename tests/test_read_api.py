"""The read API: constant SQL per request, keyset pagination, authorization, exact money."""

import asyncio
import base64
import os
import resource
import socket
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.settings import Settings
from db.compiled import driver_connection
from db.engine import _server_spoke, create_db_engine
from db.models import OrderStatus, ProductKind
from gql.app import create_app
from gql.schema.ids import to_global_id
from services.catalog import products_by_ids
from tests.conftest import EXECUTORS, GraphQL, StatementCounter, error_codes, graphql_post_scope
from tests.databases import libpq_dsn
from tests.factories import Factory

ORDER_HISTORY = """
query History($first: Int!) {
  orders(first: $first) {
    edges { cursor node {
      id status total { amount currency }
      user { id name email }
      items { quantity unitPrice { amount currency } subtotal { amount }
              product { id name price { amount currency } stock } }
    } }
    pageInfo { hasNextPage endCursor }
  }
}
"""

PRODUCTS_PAGE = """
query Page($first: Int, $after: String, $orderBy: ProductOrder!, $filter: ProductFilter) {
  products(first: $first, after: $after, orderBy: $orderBy, filter: $filter) {
    edges { cursor node { id name price { amount currency } } }
    pageInfo { hasNextPage hasPreviousPage endCursor }
  }
}
"""


@pytest.fixture(params=EXECUTORS)
def executor(request: pytest.FixtureRequest) -> str:
    """Every test of this module that builds the app runs on both executors (the test id
    says which one a statement count measured)."""
    value: str = request.param
    return value


# Statement counts are the prefetching's (resolvers), not the executor's: measured with each
# EXECUTOR (the param id says which).
async def test_order_history_runs_the_same_statements_for_1_and_100_orders(
    factory: Factory, gql: GraphQL, statements: StatementCounter, executor: str
) -> None:
    user, token = await factory.user()
    products = await factory.products(30)
    for n in range(100):
        chosen = [products[(n + k) % 30] for k in range(1 + n % 5)]
        await factory.order(user, [(product, 1 + k) for k, product in enumerate(chosen)])

    # asyncpg introspects array types once per new connection: warm the connection up first.
    await gql(ORDER_HISTORY, {"first": 1}, token=token)

    statements.reset()
    one = await gql(ORDER_HISTORY, {"first": 1}, token=token)
    statements_for_one = statements.count

    statements.reset()
    hundred = await gql(ORDER_HISTORY, {"first": 100}, token=token)
    statements_for_hundred = statements.count

    assert "errors" not in one and "errors" not in hundred
    assert len(one["data"]["orders"]["edges"]) == 1
    edges = hundred["data"]["orders"]["edges"]
    assert len(edges) == 100
    assert sum(len(edge["node"]["items"]) for edge in edges) == sum(1 + n % 5 for n in range(100))
    # viewer, orders, items, products, users: one statement per type and level. Warm, the
    # compiled executor's plan takes the items with their products as JSON from one statement.
    expected = 4 if executor == "compiled" else 5
    assert statements_for_one == statements_for_hundred == expected, [
        s[:60] for s in statements.statements
    ]


# Statement counts are the prefetching's (resolvers), not the executor's: measured with each
# EXECUTOR (the param id says which).
async def test_nested_relations_resolve_through_loaders_without_prefetch(
    factory: Factory, gql: GraphQL, statements: StatementCounter
) -> None:
    """Relations reached where no list prefetched them still batch: one statement per type."""
    user, token = await factory.user()
    products = await factory.products(6)
    await gql("{ me { id } orders { edges { node { items { product { id } } } } } }", token=token)
    order_ids = [
        to_global_id("Order", (await factory.order(user, [(products[n], 1), (products[5], 2)])).id)
        for n in range(5)
    ]
    aliases = " ".join(
        f'o{n}: node(id: "{oid}") {{ ... on Order {{ items {{ product {{ name }} }} }} }}'
        for n, oid in enumerate(order_ids)
    )
    statements.reset()
    body = await gql(f"{{ {aliases} }}", token=token)
    assert "errors" not in body
    assert all(body["data"][f"o{n}"]["items"][0]["product"]["name"] for n in range(5))
    assert statements.count == 4, statements.statements  # viewer, orders, items, products


async def test_walking_products_pages_returns_each_product_once_in_order(
    factory: Factory, gql: GraphQL
) -> None:
    # Repeated prices make the id tie-breaker matter at page boundaries.
    for n in range(45):
        await factory.product(name=f"Room {n:02d}", price=f"{50 + n % 6}.25")

    for order_by, sort_key in [
        ("PRICE_ASC", lambda node: (Decimal(node["price"]["amount"]), node["id"])),
        ("NAME_ASC", lambda node: node["name"]),
    ]:
        seen: list[dict[str, object]] = []
        after = None
        pages = 0
        while True:
            body = await gql(PRODUCTS_PAGE, {"first": 7, "after": after, "orderBy": order_by})
            assert "errors" not in body, body
            connection = body["data"]["products"]
            seen.extend(edge["node"] for edge in connection["edges"])
            pages += 1
            assert connection["pageInfo"]["hasPreviousPage"] is (after is not None)
            if not connection["pageInfo"]["hasNextPage"]:
                break
            after = connection["pageInfo"]["endCursor"]
        assert pages == 7
        ids = [node["id"] for node in seen]
        assert len(ids) == len(set(ids)) == 45
        prices = [Decimal(str(node["price"]["amount"])) for node in seen]  # type: ignore[index]
        if order_by == "PRICE_ASC":
            assert prices == sorted(prices)
        else:
            assert [node["name"] for node in seen] == sorted(node["name"] for node in seen)
        assert sort_key  # the ordering under test


async def test_page_ends_have_cursors_whether_or_not_the_edges_ask_for_theirs(
    factory: Factory, gql: GraphQL
) -> None:
    """Edge cursors are encoded only when selected; the page's ends always are."""
    _, token = await factory.user()
    for n in range(3):
        await factory.product(name=f"Cabin {n}")
    ends = "pageInfo { startCursor endCursor }"
    for field in ("products(first: 2)", "orders(first: 2)"):
        with_edges = await gql(f"{{ {field} {{ edges {{ cursor }} {ends} }} }}", token=token)
        without = await gql(f"{{ {field} {{ edges {{ node {{ id }} }} {ends} }} }}", token=token)
        assert "errors" not in with_edges and "errors" not in without, (with_edges, without)
        [connection] = with_edges["data"].values()
        cursors = [edge["cursor"] for edge in connection["edges"]]
        page_info = connection["pageInfo"]
        assert (page_info["startCursor"], page_info["endCursor"]) == (
            (cursors[0], cursors[-1]) if cursors else (None, None)
        )
        assert next(iter(without["data"].values()))["pageInfo"] == page_info
    products = (await gql("{ products(first: 2) { pageInfo { endCursor } } }"))["data"]
    assert products["products"]["pageInfo"]["endCursor"] is not None


async def test_newest_products_come_first(factory: Factory, gql: GraphQL) -> None:
    first, second = await factory.product(name="Older"), await factory.product(name="Newer")
    body = await gql(PRODUCTS_PAGE, {"first": 2, "orderBy": "NEWEST"})
    names = [edge["node"]["name"] for edge in body["data"]["products"]["edges"]]
    assert names == ["Newer", "Older"], (first.id, second.id)


async def test_forged_or_foreign_cursors_are_bad_user_input(factory: Factory, gql: GraphQL) -> None:
    await factory.products(3)
    body = await gql(PRODUCTS_PAGE, {"first": 2, "orderBy": "PRICE_ASC"})
    price_cursor = body["data"]["products"]["pageInfo"]["endCursor"]

    forged = [
        "not-a-cursor!!",
        base64.urlsafe_b64encode(b'["products:PRICE_ASC","abc",1]').decode(),
        base64.urlsafe_b64encode(b'{"id": 1}').decode(),
        price_cursor[:-3],
    ]
    for cursor in forged:
        body = await gql(PRODUCTS_PAGE, {"first": 2, "after": cursor, "orderBy": "PRICE_ASC"})
        assert error_codes(body) == ["BAD_USER_INPUT"], (cursor, body)
        assert body["data"] is None
    # A cursor of one ordering replayed against another.
    body = await gql(PRODUCTS_PAGE, {"first": 2, "after": price_cursor, "orderBy": "NAME_ASC"})
    assert error_codes(body) == ["BAD_USER_INPUT"]


async def test_page_size_is_capped(factory: Factory, gql: GraphQL) -> None:
    body = await gql(PRODUCTS_PAGE, {"first": 101, "orderBy": "NEWEST"})
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert "at most 100" in body["errors"][0]["message"]
    body = await gql(PRODUCTS_PAGE, {"first": -1, "orderBy": "NEWEST"})
    assert error_codes(body) == ["BAD_USER_INPUT"]


async def test_product_filters_combine(factory: Factory, gql: GraphQL) -> None:
    await factory.product(name="Lisbon Walking Tour", price="30.00", kind=ProductKind.TOUR)
    await factory.product(name="Lisbon 100% Food Tour", price="80.00", kind=ProductKind.TOUR)
    await factory.product(name="Lisbon Harbour Hotel", price="80.00")
    await factory.product(name="Porto Food Tour", price="120.00", kind=ProductKind.TOUR)

    async def names(product_filter: dict[str, object]) -> list[str]:
        body = await gql(PRODUCTS_PAGE, {"orderBy": "NAME_ASC", "filter": product_filter})
        assert "errors" not in body, body
        return [edge["node"]["name"] for edge in body["data"]["products"]["edges"]]

    assert await names({"kinds": ["TOUR"], "currency": "EUR", "maxPrice": "100"}) == [
        "Lisbon 100% Food Tour",
        "Lisbon Walking Tour",
    ]
    assert await names({"nameContains": "food", "currency": "EUR", "minPrice": "50.00"}) == [
        "Lisbon 100% Food Tour",
        "Porto Food Tour",
    ]
    # LIKE wildcards in the search text are matched literally.
    assert await names({"nameContains": "100%"}) == ["Lisbon 100% Food Tour"]
    assert await names({"nameContains": "_"}) == []

    body = await gql(
        PRODUCTS_PAGE,
        {"orderBy": "NAME_ASC", "filter": {"currency": "EUR", "minPrice": "9", "maxPrice": "1"}},
    )
    assert error_codes(body) == ["BAD_USER_INPUT"]


async def test_a_user_cannot_see_another_users_order(factory: Factory, gql: GraphQL) -> None:
    owner, owner_token = await factory.user()
    _, stranger_token = await factory.user()
    _, admin_token = await factory.user(is_admin=True)
    order = await factory.order(owner, [(await factory.product(), 2)])
    order_id = to_global_id("Order", order.id)
    query = """query ($id: ID!) {
        order(id: $id) { id status }
        node(id: $id) { id ... on Order { status } }
    }"""

    for token in (owner_token, admin_token):
        body = await gql(query, {"id": order_id}, token=token)
        assert body["data"]["order"]["id"] == order_id
        assert body["data"]["node"]["id"] == order_id

    body = await gql(query, {"id": order_id}, token=stranger_token)
    assert "errors" not in body
    assert body["data"] == {"order": None, "node": None}

    stranger_history = await gql("{ orders { edges { node { id } } } }", token=stranger_token)
    assert stranger_history["data"]["orders"]["edges"] == []


async def test_anonymous_and_bad_tokens_are_unauthenticated(factory: Factory, gql: GraphQL) -> None:
    body = await gql("{ orders { edges { node { id } } } }")
    assert error_codes(body) == ["UNAUTHENTICATED"]
    assert body["data"] is None

    body = await gql("{ me { id } }")
    assert body == {"data": {"me": None}}

    for token in ("bk_not_a_real_token", "x" * 500):
        body = await gql("{ me { id } orders { edges { cursor } } }", token=token)
        assert set(error_codes(body)) == {"UNAUTHENTICATED"}

    # Public data needs no token.
    await factory.product()
    body = await gql("{ products(first: 1) { edges { node { name } } } }")
    assert len(body["data"]["products"]["edges"]) == 1


async def test_orders_filter_by_status_and_paginate(factory: Factory, gql: GraphQL) -> None:
    user, token = await factory.user()
    product = await factory.product()
    for n in range(9):
        status = OrderStatus.CANCELLED if n % 3 == 0 else OrderStatus.CONFIRMED
        await factory.order(user, [(product, 1)], status=status)
    query = """query ($after: String) {
        orders(first: 2, after: $after, status: CONFIRMED) {
          edges { node { id status } } pageInfo { hasNextPage endCursor } } }"""
    seen, after = [], None
    while True:
        connection = (await gql(query, {"after": after}, token=token))["data"]["orders"]
        seen += [edge["node"] for edge in connection["edges"]]
        if not connection["pageInfo"]["hasNextPage"]:
            break
        after = connection["pageInfo"]["endCursor"]
    assert len(seen) == 6
    assert {node["status"] for node in seen} == {"CONFIRMED"}
    row_ids = [int(base64.urlsafe_b64decode(n["id"] + "==").split(b":")[1]) for n in seen]
    assert row_ids == sorted(row_ids, reverse=True)


async def test_money_is_an_exact_decimal_string_with_currency(
    factory: Factory, gql: GraphQL
) -> None:
    user, token = await factory.user()
    cheap = await factory.product(price="0.10", currency="USD")
    dear = await factory.product(price="99999999.99", currency="USD")
    await factory.order(user, [(cheap, 3), (dear, 1)])
    body = await gql(ORDER_HISTORY, {"first": 1}, token=token)
    order = body["data"]["orders"]["edges"][0]["node"]
    # 0.1 * 3 is 0.30000000000000004 in floating point; money must not be.
    assert order["total"] == {"amount": "100000000.29", "currency": "USD"}
    subtotals = sorted(item["subtotal"]["amount"] for item in order["items"])
    assert subtotals == ["0.30", "99999999.99"]
    assert {item["unitPrice"]["currency"] for item in order["items"]} == {"USD"}
    # Read as the database's exact text: the trailing zero of 0.10 stays.
    assert sorted(item["unitPrice"]["amount"] for item in order["items"]) == ["0.10", "99999999.99"]


async def test_malformed_ids_are_bad_user_input(factory: Factory, gql: GraphQL) -> None:
    _, token = await factory.user()
    for bad in ("!!!", to_global_id("Order", 1), base64.b64encode(b"Product:-4").decode()):
        body = await gql("query ($id: ID!) { product(id: $id) { id } }", {"id": bad}, token=token)
        assert error_codes(body) == ["BAD_USER_INPUT"], (bad, body)
    missing = to_global_id("Product", 999_999)
    body = await gql("query ($id: ID!) { product(id: $id) { id } }", {"id": missing})
    assert body == {"data": {"product": None}}


async def test_request_errors_have_stable_codes(gql: GraphQL) -> None:
    assert error_codes(await gql("{ products { edges ")) == ["GRAPHQL_PARSE_FAILED"]
    assert error_codes(await gql("{ products { nope } }")) == ["GRAPHQL_VALIDATION_FAILED"]
    body = await gql(
        "query ($f: ProductFilter) { products(filter: $f) { edges { cursor } } }",
        {"f": {"currency": "EUR", "minPrice": "twelve"}},
    )
    assert error_codes(body) == ["BAD_USER_INPUT"]


async def test_root_fields_of_one_document_share_the_session_safely(
    factory: Factory, gql: GraphQL
) -> None:
    """graphql-core runs root query fields concurrently; they take turns on the connection."""
    user, token = await factory.user(name="Concurrent Carla")
    product = await factory.product(name="Shared Room")
    await factory.order(user, [(product, 1)])
    body = await gql(
        """{ me { name } a: orders(first: 5) { edges { node { items { product { name } } } } }
             p: products(first: 5) { edges { node { name } } }
             b: orders(first: 1, status: CONFIRMED) { edges { cursor } } }""",
        token=token,
    )
    assert "errors" not in body, body
    assert body["data"]["me"]["name"] == "Concurrent Carla"
    assert body["data"]["a"]["edges"][0]["node"]["items"][0]["product"]["name"] == "Shared Room"
    assert body["data"]["p"]["edges"][0]["node"]["name"] == "Shared Room"
    assert len(body["data"]["b"]["edges"]) == 1


async def test_a_session_reads_through_a_new_connection_after_commit(
    factory: Factory, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    """The driver connection remembered for fast reads is forgotten when the transaction
    ends, so reads after a commit never use a connection returned to the pool."""
    product = await factory.product(name="Before")
    async with session_factory() as session:
        first = await driver_connection(session)
        assert (await products_by_ids(session, [product.id]))[product.id]["name"] == "Before"
        await session.commit()
        assert session.info == {}
        assert (await products_by_ids(session, [product.id]))[product.id]["stock"] == 10
        assert session.info["db.compiled.driver_connection"] is not None
        assert first is not None


# Statement counts are the prefetching's (resolvers), not the executor's: measured with each
# EXECUTOR (the param id says which).
async def test_lists_read_only_the_columns_of_selected_fields(
    factory: Factory, gql: GraphQL, statements: StatementCounter
) -> None:
    user, token = await factory.user()
    product = await factory.product(name="Harbour Loft", price="12.50")
    await factory.order(user, [(product, 2)])
    await gql("{ me { id } }", token=token)

    statements.reset()
    body = await gql(
        "{ orders { edges { node { status items { product { name } } } } } }", token=token
    )
    assert body["data"]["orders"]["edges"][0]["node"]["items"][0]["product"]["name"] == (
        "Harbour Loft"
    )
    product_statement = next(s for s in statements.statements if "FROM products" in s)
    assert "description" not in product_statement and "created_at" not in product_statement

    # The catalogue list too, with the cursor's sort column added by the service.
    statements.reset()
    page = await gql(
        "{ products(first: 2, orderBy: PRICE_ASC) { edges { cursor node { name } } } }"
    )
    assert page["data"]["products"]["edges"][0]["node"]["name"] == "Harbour Loft"
    (catalogue_statement,) = statements.statements
    assert "description" not in catalogue_statement and "products.price" in catalogue_statement

    # Fields reached through fragments count as selected.
    body = await gql(
        """fragment Details on Product { description createdAt price { amount } }
           { orders { edges { node { total { amount } items { product { ...Details } } } } } }""",
        token=token,
    )
    node = body["data"]["orders"]["edges"][0]["node"]
    assert node["total"]["amount"] == "25.00"
    selected = node["items"][0]["product"]
    assert selected["description"] == "" and selected["createdAt"]
    assert selected["price"]["amount"] == "12.50"


async def test_connections_dropped_by_the_server_are_replaced_unseen(
    factory: Factory, gql: GraphQL, database_url: str
) -> None:
    """A database restart or an idle timeout kills pooled connections: the checkout ping
    notices and the pool hands out a fresh one, so no request fails."""
    await factory.product(name="Survivor")
    query = "{ products(first: 1) { edges { node { name } } } }"
    assert "errors" not in await gql(query)
    assert await _terminate_other_backends(database_url) >= 1
    for _ in range(3):
        body = await gql(query)
        assert body["data"]["products"]["edges"][0]["node"]["name"] == "Survivor", body


async def test_only_a_connection_idle_for_a_while_is_pinged_on_checkout(database_url: str) -> None:
    """A busy pool pays no round trip per checkout; one idle past DB_POOL_PING_AFTER does."""
    settings = Settings(environment="test", redis_url=None, db_pool_size=1, db_pool_ping_after=0.2)
    engine = create_db_engine(database_url, settings)
    pings: list[str] = []

    def record_ping(record: Any) -> None:
        if record.query == ";":
            pings.append(record.query)

    def log_from_the_start(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.driver_connection.add_query_logger(record_ping)

    # Listened after the engine's own: a new connection is noted as just used first.
    event.listen(engine.sync_engine.pool, "connect", log_from_the_start)

    async def check_out() -> None:
        async with engine.connect():
            pass
        await asyncio.sleep(0)  # query loggers are called soon, not at once

    try:
        await check_out()  # a new connection: opened a moment ago, not pinged
        await check_out()
        await check_out()
        assert pings == []
        await asyncio.sleep(0.25)
        await check_out()
        assert pings == [";"]
    finally:
        await engine.dispose()


def test_a_connection_on_a_high_file_descriptor_is_looked_at_without_error() -> None:
    """`select.select` refuses descriptors from 1024 on, which a busy worker's sockets reach:
    the checkout's look at an idle connection must not turn into an error for every request."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1500:
        pytest.skip(f"cannot open descriptor 1500 here (hard limit {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    ours, theirs = socket.socketpair()
    try:
        with socket.socket(fileno=os.dup2(ours.fileno(), 1500)) as sock:
            assert sock.fileno() == 1500
            transport = SimpleNamespace(get_extra_info=lambda name: sock)
            driver = SimpleNamespace(_transport=transport)
            assert _server_spoke(driver) is False
            theirs.send(b"bye")
            assert _server_spoke(driver) is True
    finally:
        ours.close()
        theirs.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_the_connection_is_back_in_the_pool_before_the_response_is_sent(
    factory: Factory, app: FastAPI
) -> None:
    _, token = await factory.user()
    await factory.product()
    checked_out_at_response: list[int] = []
    body = b'{"query": "{ me { id } products(first: 1) { edges { cursor } } }"}'

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200
            checked_out_at_response.append(app.state.engine.pool.checkedout())

    scope = graphql_post_scope((b"authorization", f"Bearer {token}".encode()))
    await app(scope, receive, send)
    assert checked_out_at_response == [0]


async def test_a_connection_lost_mid_request_is_unavailable_then_replaced(
    factory: Factory, database_url: str
) -> None:
    """Without the checkout ping (or when the server dies between ping and query), the read
    fails as SERVICE_UNAVAILABLE, a retry-able answer, and the dead connection is discarded."""
    await factory.product(name="Phoenix")
    settings = Settings(
        environment="test", redis_url=None, rate_limit_enabled=False, db_pool_pre_ping=False
    )
    application = create_app(settings, database_url=database_url)
    query = {"query": "{ products(first: 1) { edges { node { name } } } }"}
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert "errors" not in (await client.post("/graphql", json=query)).json()
            await _terminate_other_backends(database_url)
            lost = (await client.post("/graphql", json=query)).json()
            assert error_codes(lost) == ["SERVICE_UNAVAILABLE"], lost
            again = (await client.post("/graphql", json=query)).json()
            assert again["data"]["products"]["edges"][0]["node"]["name"] == "Phoenix", again


async def _terminate_other_backends(database_url: str) -> int:
    connection = await asyncpg.connect(libpq_dsn(database_url))
    try:
        # Waits (up to 5 s each) until the backends are gone, as after a restart: what is
        # under test is noticing dropped connections, not racing the server's shutdown.
        killed: int = await connection.fetchval(
            "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return killed
    finally:
        await connection.close()
