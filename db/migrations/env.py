"""Alembic environment: async engine, metadata from db.models."""

import asyncio
import os

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from core.settings import get_settings
from db.embedded import to_async_url
from db.engine import driver_connect_args
from db.migrate import ADVISORY_LOCK_KEY
from db.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError("no database URL: set DATABASE_URL or use db.migrate")
    return to_async_url(url)


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        # One migration at a time per database (db.migrate.ADVISORY_LOCK_KEY): the lock is
        # taken before Alembic reads the current revision, so a second run waits, then finds
        # the work done.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        context.run_migrations()


async def run_migrations_online() -> None:
    # The service's connection arguments: through PgBouncer (DB_PGBOUNCER) no statement is
    # named or cached on the server here either.
    engine = create_async_engine(
        _url(), poolclass=pool.NullPool, connect_args=driver_connect_args(get_settings())
    )
    async with engine.connect() as connection:
        await connection.run_sync(_run_sync)
    await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
