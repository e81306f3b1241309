"""The async engine and session factory, configured from settings."""

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from core.settings import Settings


def create_engine(url: str, settings: Settings) -> AsyncEngine:
    """An asyncpg engine whose pool is sized and recycled as the settings say."""
    return create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_recycle=settings.db_pool_recycle,
        pool_pre_ping=settings.db_pool_pre_ping,
        connect_args={
            "prepared_statement_cache_size": settings.db_statement_cache_size,
            "server_settings": {"application_name": "booking-gateway"},
        },
    )


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: objects returned by a committed use case stay readable by the
    # GraphQL layer without a lazy refresh (which `lazy="raise"` and async forbid anyway).
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
