"""Abuse of the request path, as a security review found it: slow bodies that held pooled
connections, bodies that are not GraphQL requests, methods the route does not serve, and
operations that end early while their resolvers still load (issue 13: H1, L1, M5, contract)."""

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from gql.schema.ids import to_global_id
from tests.conftest import StatementCounter, error_codes
from tests.edge_support import PROJECT_ROOT, app_client, captured_logs, free_port
from tests.factories import Factory

PRODUCTS = "{ products(first: 2) { edges { node { id name } } } }"


class SlowBody:
    """A request body that sends one byte, then waits until released: a client on a slow
    (or hostile) link."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"{"
        self.started.set()
        await self.release.wait()
        yield b'"query": "{ __typename }"}'


@pytest.mark.parametrize("accept", ["multipart/mixed", "text/event-stream", "application/json"])
async def test_slow_bodies_with_bogus_tokens_hold_no_pooled_connection(
    database_url: str, factory: Factory, accept: str
) -> None:
    """Before: each slow request checked out a connection for its token before its body came,
    so 2 of them starved a pool of 2 and an anonymous query waited out the pool timeout and got
    SERVICE_UNAVAILABLE."""
    await factory.product()
    async with app_client(database_url, db_pool_size=2, db_max_overflow=0, db_pool_timeout=1.0) as (
        app,
        client,
    ):
        bodies = [SlowBody() for _ in range(6)]
        slow = [
            asyncio.create_task(
                client.post(
                    "/graphql",
                    content=body,
                    headers={
                        "Authorization": f"Bearer bk_bogus{n:040d}",
                        "Accept": accept,
                        "Content-Type": "application/json",
                    },
                )
            )
            for n, body in enumerate(bodies)
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*(b.started.wait() for b in bodies)), 5)
            await asyncio.sleep(0.1)  # every slow request is inside the app, waiting for bytes
            assert app.state.engine.sync_engine.pool.checkedout() == 0
            response = await client.post("/graphql", json={"query": PRODUCTS})
            assert response.status_code == 200, response.text
            assert response.json()["data"]["products"]["edges"], response.text
        finally:
            for body in bodies:
                body.release.set()
            responses = await asyncio.gather(*slow)
        for answered in responses:
            assert answered.status_code < 500, answered.text


async def test_an_unknown_token_costs_no_more_round_trips_than_a_known_one(
    database_url: str,
) -> None:
    """Before: a well-formed unknown token was looked up on every request, and malformed ones
    too; now malformed ones are refused by their shape and unknown ones remembered."""
    async with app_client(database_url, auth_cache_seconds=5, rate_limit_enabled=False) as (
        app,
        client,
    ):
        counter = StatementCounter()
        pool = app.state.engine.sync_engine.pool
        event.listen(pool, "checkout", counter.on_checkout)
        event.listen(
            app.state.engine.sync_engine, "before_cursor_execute", counter.on_cursor_execute
        )
        query = {"query": "{ me { id } }"}
        for token in ["not-a-token", "bk_" + "x" * 500, "bk_with spaces and !?"]:
            counter.reset()
            body = (
                await client.post(
                    "/graphql", json=query, headers={"Authorization": f"Bearer {token}"}
                )
            ).json()
            await asyncio.sleep(0)
            assert error_codes(body) == ["UNAUTHENTICATED"], body
            assert counter.count == 0, counter.statements
        unknown = "bk_" + "A" * 40
        for attempt in range(3):
            counter.reset()
            body = (
                await client.post(
                    "/graphql", json=query, headers={"Authorization": f"Bearer {unknown}"}
                )
            ).json()
            await asyncio.sleep(0)
            assert error_codes(body) == ["UNAUTHENTICATED"], body
            assert counter.count == (1 if attempt == 0 else 0), counter.statements


@pytest.mark.parametrize("body", [b'"x"', b"5", b"null", b"true", b"[5]", b'["x", {}]', b"[]"])
async def test_a_json_body_that_is_not_a_request_object_is_a_graphql_shaped_400(
    client: httpx.AsyncClient, body: bytes
) -> None:
    """Before: a scalar body was an HTTP 500 with a stack trace in the ERROR log."""
    async with captured_logs() as logs:
        response = await client.post(
            "/graphql",
            content=body,
            headers={"Content-Type": "application/json", "X-Correlation-ID": "scalar-body"},
        )
    assert response.status_code == 400, response.text
    errors = response.json()["errors"]
    assert [e["extensions"]["code"] for e in errors] == ["BAD_REQUEST"]
    assert errors[0]["extensions"]["correlationId"] == "scalar-body"
    assert not [line for line in logs.lines if line["level"] == "ERROR"]


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
async def test_other_methods_get_a_graphql_shaped_405_with_allow(
    client: httpx.AsyncClient, method: str
) -> None:
    """Before: FastAPI's `{"detail": …}` without a code or correlation ID, `Allow: GET`."""
    response = await client.request(
        method, "/graphql", json={"query": "{ __typename }"}, headers={"X-Correlation-ID": "m"}
    )
    assert response.status_code == 405, response.text
    assert {m.strip() for m in response.headers["allow"].split(",")} == {"GET", "POST"}
    error = response.json()["errors"][0]
    assert error["extensions"] == {"code": "BAD_REQUEST", "correlationId": "m"}


async def test_a_mutation_over_get_is_a_405(client: httpx.AsyncClient) -> None:
    """GraphQL over HTTP: a mutation must not run over GET, and the answer is 405 (was 400)."""
    response = await client.get(
        "/graphql",
        params={"query": 'mutation { cancelOrder(id: "T3JkZXI6MQ==") { __typename } }'},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 405, response.text
    assert "POST" in response.headers["allow"]
    assert error_codes(response.json()) == ["BAD_REQUEST"]


# Operations that end early: a non-null root field fails (bad `first`) while siblings are
# still loading through the same session; `_entities` with malformed and valid items; a
# list item failing while the others load.
EARLY_ENDING = [
    "{ a: products(first: -1) { edges { node { id } } } b: products(first: 3) { edges { node {"
    ' id name stock } } } _entities(representations: [{{__typename: "Product", id: "{pid}"}}])'
    " { ... on Product { name } } }",
    '{ _entities(representations: ["\\u0017x", 921, {{__typename: "Product", id: "{pid}"}},'
    ' {{__typename: "Order", id: "{oid}"}}]) {{ ... on Product {{ name stock }} ... on Order {{'
    " createdAt updatedAt items {{ quantity product {{ name }} }} }} }}"
    " products(first: 5) {{ edges {{ node {{ id }} }} }} }}",
    "{{ _entities(representations: []) {{ ... on Order {{ createdAt updatedAt items {{ quantity"
    " }} }} }} me {{ id }} products(first: 0) {{ edges {{ node {{ id }} }} }}"
    " orders(first: 2) {{ edges {{ node {{ id }} }} }} }}",
    '{{ p: product(id: "{pid}") {{ name }} q: products(first: 2, after: "bogus") {{ edges {{'
    ' node {{ id }} }} }} r: node(id: "{oid}") {{ id }} }}',
]


async def test_operations_that_end_early_finish_their_loads_before_the_session_closes(
    database_url: str, factory: Factory
) -> None:
    """Before: about 1 in 200 such requests was a 500 (`IllegalStateChangeError`: the session
    closed while a sibling resolver was checking out its connection), and the pool logged a
    connection left to the garbage collector."""
    user, token = await factory.user()
    product = await factory.product(stock=1000)
    order = await factory.order(user, [(product, 1)])
    pid, oid = to_global_id("Product", product.id), to_global_id("Order", order.id)
    documents = [
        q.replace("{pid}", pid).replace("{oid}", oid).replace("{{", "{").replace("}}", "}")
        for q in EARLY_ENDING
    ]
    statuses: list[int] = []
    async with (
        app_client(database_url, db_pool_size=3, db_max_overflow=0, rate_limit_enabled=False) as (
            app,
            client,
        ),
        captured_logs(logging.WARNING) as logs,
    ):

        async def run(n: int) -> dict[str, Any]:
            headers = {"Authorization": f"Bearer {token}"} if n % 2 else {}
            response = await client.post(
                "/graphql", json={"query": documents[n % len(documents)]}, headers=headers
            )
            statuses.append(response.status_code)
            body: dict[str, Any] = response.json()
            return body

        for wave in range(20):
            bodies = await asyncio.gather(*(run(wave * 20 + n) for n in range(20)))
            for body in bodies:
                for error in body.get("errors") or []:
                    assert error["extensions"]["code"] != "INTERNAL_SERVER_ERROR", body
        await asyncio.sleep(0.05)
        gc.collect()
        assert app.state.engine.sync_engine.pool.checkedout() == 0
    assert statuses and set(statuses) <= {200}, sorted(set(statuses))
    assert not [line for line in logs.lines if line["level"] in ("ERROR", "CRITICAL")]
    assert not [line for line in logs.lines if "garbage collector" in line["message"]]


async def test_slow_bodies_hold_no_connection_under_gunicorn(database_url: str) -> None:
    """The review's run, on the production server: 6 clients send their headers (a bogus
    token, a streaming Accept) and one byte of body, then stall; an anonymous query must still
    be answered at once by a worker whose pool has 2 connections. Before: it waited out the
    pool timeout and got SERVICE_UNAVAILABLE."""
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "WEB_CONCURRENCY", "BIND", "ENVIRONMENT"}
    }
    env.update(
        DATABASE_URL=database_url,
        WEB_CONCURRENCY="1",
        BIND=f"127.0.0.1:{port}",
        DB_POOL_SIZE="2",
        DB_MAX_OVERFLOW="0",
        DB_POOL_TIMEOUT="3",
        RATE_LIMIT_ENABLED="false",
        ACCESS_LOG="false",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "gql.app:app",
        cwd=PROJECT_ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    stalled: list[asyncio.StreamWriter] = []
    try:
        url = f"http://127.0.0.1:{port}/graphql"
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(300):
                try:
                    await client.get(f"http://127.0.0.1:{port}/healthz")
                    break
                except httpx.TransportError:
                    assert process.returncode is None, "gunicorn exited"
                    await asyncio.sleep(0.1)
            for n in range(6):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                accept = "multipart/mixed" if n % 2 else "text/event-stream"
                writer.write(
                    (
                        "POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        f"Authorization: Bearer bk_bogus{n:040d}\r\nAccept: {accept}\r\n"
                        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
                    ).encode()
                )
                await writer.drain()
                stalled.append(writer)
            await asyncio.sleep(0.5)
            loop = asyncio.get_running_loop()
            started = loop.time()
            response = await client.post(url, json={"query": PRODUCTS})
            waited = loop.time() - started
        assert response.status_code == 200, response.text
        assert "errors" not in response.json(), response.text
        assert waited < 2.5, f"waited {waited:.2f}s: the pool was held by stalled bodies"
    finally:
        for writer in stalled:
            writer.close()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), timeout=30)


async def test_documents_that_do_not_parse_still_count_against_the_rate_limit(
    database_url: str,
) -> None:
    """Parsing costs CPU whatever its outcome: a client sending new broken texts is limited
    like any other (the limit is checked before the parse result is answered)."""
    async with app_client(database_url, rate_limit_default="2/minute") as (_, client):
        answers = [
            await client.post("/graphql", json={"query": f"{{ broken{n} "}) for n in range(3)
        ]
    assert [error_codes(a.json()) for a in answers] == [
        ["GRAPHQL_PARSE_FAILED"],
        ["GRAPHQL_PARSE_FAILED"],
        ["RATE_LIMITED"],
    ]
