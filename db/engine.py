"""The async engine and session factory, configured from settings."""

from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util import await_

from core.settings import Settings


def create_db_engine(url: str, settings: Settings) -> AsyncEngine:
    """An asyncpg engine whose pool is sized and recycled as the settings say, and whose
    connections are pinged on checkout (DB_POOL_PRE_PING)."""
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_recycle=settings.db_pool_recycle,
        # SQLAlchemy's own pre-ping, see _ping_on_checkout.
        pool_pre_ping=False,
        connect_args={
            "prepared_statement_cache_size": settings.db_statement_cache_size,
            "server_settings": {"application_name": "booking-gateway"},
        },
    )
    if settings.db_pool_pre_ping:
        event.listen(engine.sync_engine.pool, "checkout", _ping_on_checkout)
    return engine


def _ping_on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Pessimistic disconnect handling in one round trip. SQLAlchemy's `pool_pre_ping` wraps
    its asyncpg ping in BEGIN … ROLLBACK (for pgbouncer's transaction mode, which we do not
    run behind): three round trips on every request. A connection that fails the ping is
    discarded and the pool checks out another, so a database restart costs no request."""
    try:
        await_(dbapi_connection.driver_connection.fetchrow(";"))
    except Exception as error:
        raise DisconnectionError(f"connection failed its ping: {error}") from error


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: objects returned by a committed use case stay readable by the
    # GraphQL layer without a lazy refresh (which `lazy="raise"` and async forbid anyway).
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
