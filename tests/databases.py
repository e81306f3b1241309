"""Real PostgreSQL for the tests: TEST_DATABASE_URL's server if set, else an embedded pgserver.
Each test gets its own database, cloned from a migrated template, so tests run in any order
and even concurrently with another test run on the same server."""

import os
import uuid
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from db.embedded import start_embedded_postgres, to_async_url
from db.migrate import upgrade_to_head_async

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def server_url() -> str:
    """An asyncpg URL to a maintenance database of the test server."""
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        return to_async_url(configured)
    return start_embedded_postgres(PROJECT_ROOT / ".data" / "test", database="postgres")


def with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def libpq_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class DatabaseFactory:
    """Makes and drops the databases of one test run, all named with the run's prefix."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"gwtest_{uuid.uuid4().hex[:8]}"
        self.template = f"{self.prefix}_template"
        self._count = 0

    async def _admin(self, sql: str) -> None:
        connection = await asyncpg.connect(libpq_dsn(self.url))
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    async def create_template(self) -> None:
        await self._admin(f'CREATE DATABASE "{self.template}"')
        await upgrade_to_head_async(with_database(self.url, self.template))

    async def create(self) -> str:
        self._count += 1
        name = f"{self.prefix}_{self._count}"
        await self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        return with_database(self.url, name)

    async def drop(self, url: str) -> None:
        name = make_url(url).database
        await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def drop_template(self) -> None:
        await self._admin(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')
