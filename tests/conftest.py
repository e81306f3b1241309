"""Fixtures per layer: a migrated template database per run, a fresh database per test, the
app bound to it, an HTTP client, factories, and a counter of SQL statements."""

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.settings import Settings
from db.engine import create_db_engine, create_session_factory
from gql.app import create_app
from tests.databases import DatabaseFactory, server_url
from tests.factories import Factory

logging.getLogger("pgserver").setLevel(logging.WARNING)

# Every app of the run looks tokens up on every request, so a test's statement count does not
# depend on requests made before it counts (tests/test_auth.py turns the cache on).
os.environ.setdefault("AUTH_CACHE_SECONDS", "0")


@pytest.fixture(scope="session")
async def databases() -> AsyncIterator[DatabaseFactory]:
    factory = DatabaseFactory(server_url())
    await factory.create_template()
    yield factory
    await factory.drop_template()


@pytest.fixture
async def database_url(databases: DatabaseFactory) -> AsyncIterator[str]:
    url = await databases.create()
    yield url
    await databases.drop(url)


@pytest.fixture
def executor() -> str:
    """The EXECUTOR of the `app` fixture's app. A test runs with each executor by
    `@pytest.mark.parametrize("executor", EXECUTORS)`, which overrides this fixture."""
    return "compiled"


EXECUTORS = ["compiled", "reference"]


@pytest.fixture
def settings(executor: str) -> Settings:
    # Rate limits off here: suites that hammer one user (concurrency tests) would hit them;
    # tests/test_edge.py turns them on where they are the subject.
    return Settings(
        environment="test",
        executor=executor,
        redis_url=None,
        db_pool_size=5,
        db_max_overflow=20,
        rate_limit_enabled=False,
    )


@pytest.fixture
async def engine(database_url: str, settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_db_engine(database_url, settings)
    yield engine
    await engine.dispose()


@pytest.fixture
def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_session_factory(engine)


@pytest.fixture
def factory(session_factory: async_sessionmaker[AsyncSession]) -> Factory:
    return Factory(session_factory)


@pytest.fixture
async def app(database_url: str, settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings, database_url=database_url)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK")
DRIVER_INTROSPECTION = ("typeinfo_tree", "current_setting('jit')", "set_config('jit'")


class StatementCounter:
    """Counts the SQL statements an engine sends: those SQLAlchemy executes (cursor events) and
    those run straight on the asyncpg connection by `db.compiled` (asyncpg query loggers)."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        # BEGIN, COMMIT, ROLLBACK sent by the driver: kept apart, not counted.
        self.transaction_control: list[str] = []

    def on_cursor_execute(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.statements.append(statement)

    def on_driver_query(self, record: Any) -> None:
        # Not the request's queries: transaction control (SQLAlchemy's adapter sends BEGIN and
        # COMMIT through the driver; the SQLAlchemy side of the count never saw them), the
        # pool's pre-ping (BEGIN; ";"; ROLLBACK), and asyncpg's type introspection, run once
        # per new connection for array parameters.
        query = record.query
        if query.startswith(TRANSACTION_CONTROL):
            self.transaction_control.append(query)
            return
        if query == ";":
            return
        if any(mark in query for mark in DRIVER_INTROSPECTION):
            return
        self.statements.append(query)

    def on_checkout(self, dbapi_connection: Any, *_args: Any) -> None:
        driver = dbapi_connection.driver_connection
        driver.remove_query_logger(self.on_driver_query)
        driver.add_query_logger(self.on_driver_query)

    @property
    def count(self) -> int:
        return len(self.statements)

    def reset(self) -> None:
        self.statements.clear()
        self.transaction_control.clear()


@pytest.fixture
def statements(app: FastAPI) -> Iterator[StatementCounter]:
    counter = StatementCounter()
    sync_engine = app.state.engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", counter.on_cursor_execute)
    event.listen(sync_engine.pool, "checkout", counter.on_checkout)
    yield counter
    event.remove(sync_engine, "before_cursor_execute", counter.on_cursor_execute)
    event.remove(sync_engine.pool, "checkout", counter.on_checkout)


class GraphQL:
    """Posts GraphQL operations to the app, as a frontend would."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def __call__(
        self, query: str, variables: dict[str, Any] | None = None, *, token: str | None = None
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await self.client.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
        )
        assert response.status_code in (200, 400), response.text
        # asyncpg reports queries to its loggers (StatementCounter) with call_soon: let the
        # loop run them before a test reads the count.
        await asyncio.sleep(0)
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture
def gql(client: httpx.AsyncClient) -> GraphQL:
    return GraphQL(client)


def error_codes(body: dict[str, Any]) -> list[str]:
    return [error.get("extensions", {}).get("code") for error in body.get("errors") or []]


def graphql_post_scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    """The ASGI scope of a POST /graphql, for tests that drive the app at the ASGI level to see
    what happens around `send` (which an HTTP client hides)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/graphql",
        "raw_path": b"/graphql",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
