"""Subscriptions over graphql-transport-ws against real servers: two apps (each with its own
event loop, pool and LISTEN connection, as two processes have) on one database, subscribing on
one and writing on the other."""

import asyncio
import logging
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from core.settings import Settings
from db.models import Product
from gql.app import create_app
from gql.schema.ids import from_global_id, to_global_id
from services.events import (
    EventHub,
    OrderChanged,
    SlowConsumer,
    StockChanged,
    SubscriptionLimitReached,
    parse_payload,
)
from tests.databases import libpq_dsn
from tests.deployment import gunicorn_instances, pgbouncer
from tests.documents import CANCEL_ORDER, RELEASE
from tests.factories import Factory
from tests.identity_provider import AUDIENCE, ISSUER, IdentityProvider
from tests.live import serving
from tests.test_reservations import RESERVE

STOCK = "subscription Stock($ids: [ID!]!) { productStockChanged(ids: $ids) { id stock } }"
ORDERS = "subscription { orderUpdated { id status items { quantity product { id } } } }"
CREATE_ORDER = """
mutation Create($input: CreateOrderInput!) {
  createOrder(input: $input) {
    __typename
    ... on CreateOrderSuccess { order { id } }
    ... on InsufficientStock { available }
  }
}
"""
WAIT = 2.0  # seconds an expected message may take
QUIET = 0.3  # seconds during which nothing more may come


@pytest.fixture
def settings() -> Settings:
    return Settings(
        environment="test",
        redis_url=None,
        rate_limit_enabled=False,
        db_pool_size=5,
        subscription_queue_size=2,
    )


class Server:
    def __init__(self, app: FastAPI, url: str) -> None:
        self.app = app
        self.url = url
        self.http = httpx.AsyncClient(base_url=url, timeout=10)

    @property
    def open_streams(self) -> int:
        count: int = self.app.state.events.open_streams
        return count

    async def graphql(
        self, query: str, variables: dict[str, Any] | None = None, *, token: str | None = None
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await self.http.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
        )
        body: dict[str, Any] = response.json()
        return body

    @asynccontextmanager
    async def websocket(
        self, token: str | None = None, *, init: bool = True
    ) -> AsyncIterator["Client"]:
        url = self.url.replace("http://", "ws://") + "/graphql"
        async with connect(url, subprotocols=["graphql-transport-ws"]) as socket:  # type: ignore[list-item]
            client = Client(socket)
            if init:
                payload = {"Authorization": f"Bearer {token}"} if token else {}
                await client.send({"type": "connection_init", "payload": payload})
                assert (await client.receive())["type"] == "connection_ack"
            yield client


class Client:
    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket

    async def send(self, message: dict[str, Any]) -> None:
        await self.socket.send(orjson.dumps(message).decode())

    async def subscribe(self, id: str, query: str, variables: dict[str, Any] | None = None) -> None:
        payload = {"query": query, "variables": variables or {}}
        await self.send({"type": "subscribe", "id": id, "payload": payload})

    async def receive(self, within: float = WAIT) -> dict[str, Any]:
        while True:
            async with asyncio.timeout(within):
                message: dict[str, Any] = orjson.loads(await self.socket.recv())
            if message["type"] == "ping":
                await self.send({"type": "pong"})
                continue
            return message

    async def nothing_more(self) -> None:
        with pytest.raises(TimeoutError):
            message = await self.receive(QUIET)
            pytest.fail(f"unexpected message {message}")


@asynccontextmanager
async def server(settings: Settings, database_url: str) -> AsyncIterator[Server]:
    app = create_app(settings, database_url=database_url)
    async with serving(app) as url:
        instance = Server(app, url)
        await until(app.state.events.listening.is_set)
        try:
            yield instance
        finally:
            await instance.http.aclose()


@pytest.fixture
async def servers(settings: Settings, database_url: str) -> AsyncIterator[tuple[Server, Server]]:
    async with server(settings, database_url) as one, server(settings, database_url) as two:
        yield one, two


async def until(condition: Callable[[], bool], within: float = WAIT) -> None:
    """Poll `condition` (state of a server's own thread) until it holds."""
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError


def pid(product: Product) -> str:
    return to_global_id("Product", product.id)


def order_input(key: str, product: Product, quantity: int) -> dict[str, Any]:
    items = [{"productId": pid(product), "quantity": quantity}]
    return {"input": {"idempotencyKey": key, "items": items}}


async def test_stock_changes_reach_another_process_in_commit_order_and_failed_writes_send_nothing(
    servers: tuple[Server, Server], factory: Factory, database_url: str
) -> None:
    listening, writing = servers
    product = await factory.product(stock=3)
    other = await factory.product(stock=3)
    _, token = await factory.user()
    async with listening.websocket() as client:
        await client.subscribe("1", STOCK, {"ids": [pid(product)]})
        await until(lambda: listening.open_streams == 1)
        latencies = []
        expected = []
        order_ids = []
        for key, quantity in (("a", 1), ("b", 5), ("c", 1), ("d", 1)):
            started = time.perf_counter()
            body = await writing.graphql(
                CREATE_ORDER, order_input(key, product, quantity), token=token
            )
            outcome = body["data"]["createOrder"]
            if outcome["__typename"] != "CreateOrderSuccess":
                assert outcome == {"__typename": "InsufficientStock", "available": 2}
                continue  # rolled back: nothing may be sent
            order_ids.append(outcome["order"]["id"])
            expected.append(3 - len(order_ids))
            message = await client.receive()
            latencies.append(time.perf_counter() - started)
            assert message == {
                "type": "next",
                "id": "1",
                "payload": {
                    "data": {"productStockChanged": {"id": pid(product), "stock": expected[-1]}}
                },
            }
        # A change of another product is not this subscription's.
        await writing.graphql(CREATE_ORDER, order_input("e", other, 1), token=token)
        # Changes committed back to back arrive in commit order.
        for order_id in order_ids:
            await writing.graphql(CANCEL_ORDER, {"id": order_id}, token=token)
        stocks = [
            (await client.receive())["payload"]["data"]["productStockChanged"]["stock"]
            for _ in order_ids
        ]
        assert stocks == [1, 2, 3]
        await client.nothing_more()
        # Between events a subscription holds no pooled connection.
        assert listening.app.state.engine.sync_engine.pool.checkedout() == 0
        metrics = (await listening.http.get("/metrics")).text
        assert "graphql_subscriptions_open 1.0" in metrics
        assert "graphql_subscription_events_total" in metrics
        assert "change_feed_listening 1.0" in metrics
        # One LISTEN connection per process, not one per subscription.
        async with listening.websocket() as second:
            for n in range(5):
                await second.subscribe(str(n), STOCK, {"ids": [pid(product)]})
            await until(lambda: listening.open_streams == 6)
            async with factory.session_factory() as session:
                listeners = await session.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                    )
                )
            assert listeners == 2
    print(
        f"\nstock event after the mutation's response: "
        f"median {statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
    )


async def test_order_updates_go_to_their_owner_only(
    servers: tuple[Server, Server], factory: Factory
) -> None:
    listening, writing = servers
    product = await factory.product(stock=5)
    _, owner_token = await factory.user()
    _, other_token = await factory.user()
    _, admin_token = await factory.user(is_admin=True)
    async with (
        listening.websocket(owner_token) as mine,
        listening.websocket(other_token) as theirs,
        listening.websocket(admin_token) as admins,
    ):
        for client in (mine, theirs, admins):
            await client.subscribe("o", ORDERS)
        await until(lambda: listening.open_streams == 3)
        body = await writing.graphql(CREATE_ORDER, order_input("k", product, 2), token=owner_token)
        order_id = body["data"]["createOrder"]["order"]["id"]
        created = await mine.receive()
        assert created["payload"]["data"]["orderUpdated"] == {
            "id": order_id,
            "status": "CONFIRMED",
            "items": [{"quantity": 2, "product": {"id": pid(product)}}],
        }
        await writing.graphql(CANCEL_ORDER, {"id": order_id}, token=owner_token)
        cancelled = await mine.receive()
        assert cancelled["payload"]["data"]["orderUpdated"]["status"] == "CANCELLED"
        await theirs.nothing_more()
        await admins.nothing_more()


async def test_subscriptions_refuse_missing_and_invalid_tokens(
    servers: tuple[Server, Server],
) -> None:
    listening, _ = servers
    async with listening.websocket() as anonymous:
        await anonymous.subscribe("o", ORDERS)
        refused = await anonymous.receive()
        assert refused["type"] == "error"
        assert refused["payload"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    async with listening.websocket(init=False) as client:
        await client.send(
            {"type": "connection_init", "payload": {"authorization": "Bearer bk_test_unknown123"}}
        )
        with pytest.raises(ConnectionClosed) as closed:
            await client.receive()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    async with listening.websocket(init=False) as client:
        await client.subscribe("s", STOCK, {"ids": []})  # before connection_init
        with pytest.raises(ConnectionClosed) as closed:
            await client.receive()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


async def test_at_most_100_products_per_subscription(
    servers: tuple[Server, Server], factory: Factory
) -> None:
    listening, _ = servers
    product = await factory.product()
    async with listening.websocket() as client:
        await client.subscribe("s", STOCK, {"ids": [pid(product)] * 101})
        refused = await client.receive()
        assert refused["type"] == "error"
        assert refused["payload"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        await client.subscribe("t", STOCK, {"ids": []})
        refused = await client.receive()
        assert refused["payload"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert listening.open_streams == 0


async def test_a_revoked_token_ends_its_subscriptions(
    servers: tuple[Server, Server], factory: Factory, database_url: str
) -> None:
    listening, writing = servers
    product = await factory.product(stock=5)
    subscriber, token = await factory.user()
    _, buyer_token = await factory.user()
    async with listening.websocket(token) as client:
        await client.subscribe("s", STOCK, {"ids": [pid(product)]})
        await until(lambda: listening.open_streams == 1)
        await writing.graphql(CREATE_ORDER, order_input("x", product, 1), token=buyer_token)
        assert (await client.receive())["type"] == "next"
        async with factory.session_factory() as session, session.begin():
            await session.execute(
                text("UPDATE api_tokens SET revoked_at = now() WHERE user_id = :user"),
                {"user": subscriber.id},
            )
        # AUTH_CACHE_SECONDS is 0 in the tests: the next event finds the token revoked.
        await writing.graphql(CREATE_ORDER, order_input("y", product, 1), token=buyer_token)
        ended = await client.receive()
        assert ended["type"] == "error"
        assert ended["payload"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    await until(lambda: listening.open_streams == 0)


async def test_a_subscription_that_falls_behind_is_dropped(
    servers: tuple[Server, Server], factory: Factory
) -> None:
    listening, _ = servers
    products = await factory.products(10, stock=5)
    async with listening.websocket() as client:
        await client.subscribe("s", STOCK, {"ids": [pid(p) for p in products]})
        await until(lambda: listening.open_streams == 1)
        # Ten changes committed at once, for a queue of two (SUBSCRIPTION_QUEUE_SIZE).
        async with factory.session_factory() as session, session.begin():
            await session.execute(text("UPDATE products SET stock = stock - 1"))
        messages = [await client.receive()]
        while messages[-1]["type"] == "next":
            messages.append(await client.receive())
        assert messages[-1]["type"] == "error"
        assert messages[-1]["payload"][0]["extensions"]["code"] == "SLOW_CONSUMER"
        assert len(messages) <= 3
        assert listening.open_streams == 0


async def test_subscribers_learn_of_a_listener_reconnect(
    servers: tuple[Server, Server], factory: Factory
) -> None:
    listening, _ = servers
    product = await factory.product(stock=7)
    _, token = await factory.user()
    async with listening.websocket(token) as client:
        await client.subscribe("s", STOCK, {"ids": [pid(product)]})
        await client.subscribe("o", ORDERS)
        await until(lambda: listening.open_streams == 2)
        async with factory.session_factory() as session, session.begin():
            await session.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                )
            )
        messages = {}
        for _ in range(2):
            message = await client.receive(within=5)
            messages[message["id"]] = message
        # The product's state is sent again; the order feed ends, to be read and resubscribed.
        assert messages["s"]["payload"]["data"]["productStockChanged"]["stock"] == 7
        assert messages["o"]["type"] == "error"
        assert messages["o"]["payload"][0]["extensions"]["code"] == "EVENTS_INTERRUPTED"


async def test_queries_run_over_the_websocket_too(servers: tuple[Server, Server]) -> None:
    listening, _ = servers
    async with listening.websocket() as client:
        await client.subscribe("q", "{ __typename }")
        assert await client.receive() == {
            "type": "next",
            "id": "q",
            "payload": {"data": {"__typename": "Query"}},
        }
        assert await client.receive() == {"type": "complete", "id": "q"}


async def test_a_subscription_over_http_is_pointed_to_the_websocket(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/graphql", json={"query": "subscription { orderUpdated { id } }"})
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "BAD_REQUEST"
    assert "WebSocket" in error["message"]


async def test_an_idle_connection_whose_token_is_revoked_is_closed_at_its_next_ping(
    settings: Settings, database_url: str, factory: Factory
) -> None:
    quick = settings.model_copy(update={"websocket_ping_seconds": 0.2})
    user, token = await factory.user()
    async with server(quick, database_url) as listening, listening.websocket(token) as client:
        await client.subscribe("o", ORDERS)
        await until(lambda: listening.open_streams == 1)
        async with factory.session_factory() as session, session.begin():
            await session.execute(
                text("UPDATE api_tokens SET revoked_at = now() WHERE user_id = :user"),
                {"user": user.id},
            )
        with pytest.raises(ConnectionClosed) as closed:
            await client.receive()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        await until(lambda: listening.open_streams == 0)


async def test_the_event_hub_caps_subscriptions_and_drops_a_queue_that_overflows() -> None:
    hub = EventHub("postgresql://unused", queue_size=2, max_subscriptions=2)
    dropped: list[str] = []
    products = hub.open(products=frozenset({1, 2}), on_drop=lambda: dropped.append("products"))
    orders = hub.open(user_id=7)
    with pytest.raises(SubscriptionLimitReached):
        hub.open(products=frozenset({3}))
    for payload in ("o:5:7:req-1", "o:6:8:", "p:3:"):
        event = parse_payload(payload)
        assert event is not None
        hub.publish(event)
    assert await orders.next() == OrderChanged(5, 7, "req-1")  # not user 8's, nor product 3
    for _ in range(3):
        hub.publish(StockChanged(1))
    assert dropped == ["products"]
    assert hub.open_streams == 1
    with pytest.raises(SlowConsumer):
        await products.next()
    orders.close()
    assert hub.open_streams == 0
    assert parse_payload("x:1") is None
    assert parse_payload("p:not-a-number:") is None


async def test_notifications_reach_open_streams_and_are_not_parsed_without_any(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every write notifies every process; one with no subscriber only counts them."""
    hub = EventHub("postgresql://unused", queue_size=2, max_subscriptions=2)
    with caplog.at_level(logging.WARNING, logger="services.events"):
        hub._notified(None, 0, "changes", "not a payload")
        assert hub.events_received == 1 and not caplog.records
        stream = hub.open(products=frozenset({1}))
        hub._notified(None, 0, "changes", "not a payload")
        assert "unknown change notification" in caplog.text
        hub._notified(None, 0, "changes", "p:1:")
        assert await stream.next() == StockChanged(1)
    assert hub.events_received == 3
    stream.close()


async def test_a_multipart_http_subscription_streams_events_until_the_client_leaves(
    servers: tuple[Server, Server], factory: Factory
) -> None:
    listening, writing = servers
    product = await factory.product(stock=4)
    _, token = await factory.user()
    request = {"query": STOCK, "variables": {"ids": [pid(product)]}}
    accept = 'multipart/mixed;subscriptionSpec="1.0", application/json'
    received = b""
    async with listening.http.stream(
        "POST", "/graphql", json=request, headers={"Accept": accept}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("multipart/mixed;boundary=")
        await until(lambda: listening.open_streams == 1)
        await writing.graphql(CREATE_ORDER, order_input("m", product, 1), token=token)
        async with asyncio.timeout(WAIT):
            async for chunk in response.aiter_bytes():
                received += chunk
                if b"stock" in received:
                    break
    head, _, body = received.partition(b"\r\n\r\n")
    assert head == b"\r\n--graphql\r\ncontent-type: application/json; charset=utf-8"
    changed = {"id": pid(product), "stock": 3}
    assert orjson.loads(body) == {"payload": {"data": {"productStockChanged": changed}}}
    await until(lambda: listening.open_streams == 0)


async def test_a_connection_is_limited_in_subscriptions_and_in_messages(
    settings: Settings, database_url: str, factory: Factory
) -> None:
    strict = settings.model_copy(
        update={"subscriptions_per_connection": 2, "websocket_messages_per_second": 1.0}
    )
    product = await factory.product()
    async with server(strict, database_url) as listening, listening.websocket() as client:
        for n in range(3):
            await client.subscribe(str(n), STOCK, {"ids": [pid(product)]})
        refused = await client.receive()
        assert refused["id"] == "2"
        assert refused["payload"][0]["extensions"]["code"] == "SUBSCRIPTION_LIMIT"
        await until(lambda: listening.open_streams == 2)
        # A burst of 2 * 1 + 2 + 1 messages (init and three subscribes spent 4 of them).
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(5):
                await client.send({"type": "ping"})
                await client.receive()  # pong
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
        await until(lambda: listening.open_streams == 0)


@pytest.mark.parametrize("through", ["direct", "pgbouncer"])
async def test_gunicorn_processes_fan_out_each_others_writes(
    through: str, database_url: str, factory: Factory, tmp_path: Path
) -> None:
    """Two real server processes (gunicorn, one worker each): subscribed on one, written on the
    other. Behind PgBouncer in transaction mode, the LISTEN goes to EVENTS_DATABASE_URL."""
    product = await factory.product(stock=5)
    _, token = await factory.user()
    env = {
        "DATABASE_URL": database_url,
        "WEB_CONCURRENCY": "1",
        "RATE_LIMIT_ENABLED": "false",
        "ACCESS_LOG": "false",
        "LOG_LEVEL": "WARNING",
    }
    async with AsyncExitStack() as stack:
        if through == "pgbouncer":
            bouncer = await stack.enter_async_context(pgbouncer(database_url, pool_size=2))
            env |= {
                "DATABASE_URL": bouncer.url,
                "DB_PGBOUNCER": "true",
                "EVENTS_DATABASE_URL": database_url,
            }
        listening, writing = await stack.enter_async_context(
            gunicorn_instances(2, env=env, log_dir=tmp_path)
        )
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
        url = listening.url.replace("http://", "ws://") + "/graphql"
        socket = await stack.enter_async_context(
            connect(url, subprotocols=["graphql-transport-ws"])  # type: ignore[list-item]
        )
        client = Client(socket)
        await client.send(
            {"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}}
        )
        assert (await client.receive())["type"] == "connection_ack"
        await client.subscribe("s", STOCK, {"ids": [pid(product)]})
        await client.subscribe("o", "subscription { orderUpdated { status } }")
        for _ in range(200):  # the other process's own gauge, until both streams are open
            metrics = (await http.get(f"{listening.url}/metrics")).text
            if "graphql_subscriptions_open 2.0" in metrics:
                break
            await asyncio.sleep(0.02)
        response = await http.post(
            f"{writing.url}/graphql",
            json={"query": CREATE_ORDER, "variables": order_input("p", product, 1)},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.json()["data"]["createOrder"]["__typename"] == "CreateOrderSuccess"
        events = {}
        for _ in range(2):
            message = await client.receive()
            events[message["id"]] = message["payload"]["data"]
        assert events == {
            "s": {"productStockChanged": {"id": pid(product), "stock": 4}},
            "o": {"orderUpdated": {"status": "CONFIRMED"}},
        }
        async with factory.session_factory() as session:
            listeners = await session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                )
            )
        assert listeners == 2


async def test_a_jwt_that_expires_ends_its_connection(
    settings: Settings, database_url: str, tmp_path: Path
) -> None:
    provider = IdentityProvider()
    jwt_settings = settings.model_copy(
        update={
            "jwt_jwks_url": provider.write_jwks(tmp_path / "jwks.json"),
            "jwt_issuer": ISSUER,
            "jwt_audience": AUDIENCE,
            "jwt_leeway_seconds": 0,
            "websocket_ping_seconds": 0.2,
        }
    )
    async with server(jwt_settings, database_url) as listening:
        token = provider.token(exp=int(time.time()) + 3)  # 2 to 3 s from now
        async with listening.websocket(token) as client:
            await client.subscribe("o", ORDERS)
            await until(lambda: listening.open_streams == 1)
            with pytest.raises(ConnectionClosed) as closed:
                await client.receive(within=5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        await until(lambda: listening.open_streams == 0)


async def test_the_websocket_handshake_echoes_the_correlation_id(
    settings: Settings, database_url: str
) -> None:
    async with server(settings, database_url) as instance:
        url = instance.url.replace("http://", "ws://") + "/graphql"
        async with connect(
            url,
            subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
            additional_headers={"X-Correlation-ID": "ws-corr-7"},
        ) as socket:
            assert socket.response is not None
            assert socket.response.headers["X-Correlation-ID"] == "ws-corr-7"


async def test_each_change_names_the_request_that_wrote_it(
    settings: Settings, database_url: str, factory: Factory
) -> None:
    """The triggers' notifications carry the writing request's correlation ID, set by the
    statement that takes the write's locks: holds (the one-statement path and the one under
    the lock), orders, cancels and releases alike; a subscriber's log line names it."""
    product = await factory.product(stock=2)
    user, token = await factory.user()
    heard: list[str] = []
    listener = await asyncpg.connect(libpq_dsn(database_url))
    await listener.add_listener("booking_changes", lambda *args: heard.append(args[3]))

    async def write(server: Server, document: str, variables: dict[str, Any], cid: str) -> Any:
        response = await server.http.post(
            "/graphql",
            json={"query": document, "variables": variables},
            headers={"Authorization": f"Bearer {token}", "X-Correlation-ID": cid},
        )
        return response.json()["data"]

    def hold(quantity: int) -> dict[str, Any]:
        return {"input": {"productId": pid(product), "quantity": quantity}}

    try:
        async with server(settings, database_url) as instance:
            held = await write(instance, RESERVE, hold(1), "hold-1")
            await write(
                instance, RELEASE, {"id": held["reserveProduct"]["reservation"]["id"]}, "release-2"
            )
            placed = await write(instance, CREATE_ORDER, order_input("k", product, 2), "order-3")
            order_id = placed["createOrder"]["order"]["id"]
            await write(instance, CANCEL_ORDER, {"id": order_id}, "cancel-4")
            await write(instance, CREATE_ORDER, order_input("k2", product, 1), "order-5")
            # One unit left: too few for the one-statement hold of two, which then takes
            # the lock and says so.
            refused = await write(instance, RESERVE, hold(2), "hold-6")
            assert refused["reserveProduct"]["__typename"] == "InsufficientStock"
            await until(lambda: len(heard) >= 8)
    finally:
        await listener.close()
    by_request: dict[str, list[str]] = {}
    for payload in heard:
        *what, correlation_id = payload.split(":")
        by_request.setdefault(correlation_id, []).append(":".join(what))
    order_row = from_global_id(order_id)[1]
    assert {cid: sorted(changes) for cid, changes in by_request.items()} == {
        "hold-1": [f"p:{product.id}"],
        "release-2": [f"p:{product.id}"],
        "order-3": [f"o:{order_row}:{user.id}", f"p:{product.id}"],
        "cancel-4": [f"o:{order_row}:{user.id}", f"p:{product.id}"],
        "order-5": sorted([f"o:{order_row + 1}:{user.id}", f"p:{product.id}"]),
    }
