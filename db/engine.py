"""The async engine and session factory, configured from settings."""

import select
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError, MissingGreenlet
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import await_

from core.settings import Settings
from db.embedded import resolve_database_url


def create_db_engine(url: str, settings: Settings) -> AsyncEngine:
    """An asyncpg engine whose pool is sized and recycled as the settings say, and whose
    connections are checked on checkout (DB_POOL_PRE_PING)."""
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_recycle=settings.db_pool_recycle,
        # SQLAlchemy's own pre-ping, see _ping_on_checkout.
        pool_pre_ping=False,
        connect_args=driver_connect_args(settings),
    )
    event.listen(engine.sync_engine, "do_connect", _refuse_to_connect_at_once)
    if settings.db_pool_pre_ping:
        pool = engine.sync_engine.pool
        # A new connection counts as just used: it was opened a moment ago, no ping needed.
        event.listen(pool, "connect", _note_checkin)
        event.listen(pool, "checkin", _note_checkin)
        event.listen(
            pool, "checkout", partial(_check_on_checkout, ping_after=settings.db_pool_ping_after)
        )
    return engine


def driver_connect_args(settings: Settings) -> dict[str, Any]:
    """What each new connection is opened with. The statement caches are two: SQLAlchemy's
    adapter prepares its statements itself (`prepared_statement_cache_size`), while
    `db.compiled` runs its reads on asyncpg directly, through asyncpg's own cache
    (`statement_cache_size`). Both get the one setting, so `DB_PGBOUNCER=true` (or
    `DB_STATEMENT_CACHE_SIZE=0`) reaches every path.

    With no cache, nothing needs a name on the server: asyncpg then runs every statement as
    the unnamed one, parsed again in the same message batch as its execution (it does so
    whenever its cache is off), so a pooler that gives the next batch another server
    connection is harmless. SQLAlchemy's adapter would still ask asyncpg for a named statement
    (`__asyncpg_stmt_1__`, numbered per client connection: two clients sharing a server
    connection collide); its `prepared_statement_name_func` answering "" makes it the unnamed
    one too. Its documented alternative, a UUID per statement, collides with nothing but
    leaves every statement prepared on whichever server connection ran it (asyncpg closes a
    statement later, on the next checkout's server), piling up until PgBouncer closes it.

    Prepared statements are planned once, generically, by default (DB_PLAN_CACHE_MODE): under
    PostgreSQL's `auto`, a lookup by `id = ANY($1)` (every loader's) was planned again at each
    execution, about 80 µs of the server's CPU each time, because a generic plan's guess of
    ten keys costs more than the custom plan of one."""
    cache_size = 0 if settings.db_pgbouncer else settings.db_statement_cache_size
    args: dict[str, Any] = {
        "statement_cache_size": cache_size,
        "prepared_statement_cache_size": cache_size,
        "server_settings": {"application_name": "booking-gateway"},
    }
    if cache_size == 0:
        args["prepared_statement_name_func"] = _unnamed_statement
    else:
        # Only prepared statements have plans to reuse (an unnamed one is planned for its one
        # execution), and PgBouncer refuses startup parameters it does not know.
        args["server_settings"]["plan_cache_mode"] = settings.db_plan_cache_mode
    return args


def _unnamed_statement() -> str:
    return ""


_CHECKED_IN_AT = "db.engine.checked_in_at"
_PING_PENDING = "db.engine.ping_pending"


class _Checkout:
    # True while `checkout_at_once` runs (sync code: no other task runs meanwhile).
    at_once = False


def checkout_at_once(engine: AsyncEngine) -> PoolProxiedConnection | None:
    """A pooled connection, if the pool has one ready: taken by the pool's sync code, without
    the greenlet `AsyncEngine.raw_connection` runs it in (a greenlet per checkout maps and
    unmaps a new frame stack: measured, 19% of a served point read's CPU). None when taking
    one would wait on the server or on the pool (a connection to open or reopen, none free):
    the pool's `await_` then refuses (MissingGreenlet) before any I/O and the pool undoes its
    step (a connection being reopened goes back marked invalid, to be opened by the next
    checkout), and the caller awaits `engine.raw_connection()`. A ping the checkout check
    asks for is left to the caller: `passes_pending_ping`."""
    _Checkout.at_once = True
    try:
        return engine.sync_engine.raw_connection()
    except MissingGreenlet:
        return None
    finally:
        _Checkout.at_once = False


def _refuse_to_connect_at_once(*_args: Any) -> None:
    """Before the dialect makes its connect coroutine: refused at once it leaves none behind
    (a coroutine closed unawaited inside another warns)."""
    if _Checkout.at_once:
        raise MissingGreenlet("a connection is opened the awaited way")


async def passes_pending_ping(connection: PoolProxiedConnection) -> bool:
    """Whether `connection` answers the ping its checkout asked for (True if none)."""
    if not connection.info.pop(_PING_PENDING, False):
        return True
    try:
        await connection.driver_connection.fetchrow(";")  # type: ignore[union-attr]
    except Exception:
        return False
    return True


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info[_CHECKED_IN_AT] = time.monotonic()


def _server_spoke(driver: Any) -> bool:
    """Whether the server sent something the loop has not read yet to this idle connection.
    Unasked, that is mostly a goodbye (a terminated backend's error, then the close), so the
    connection is then pinged. One `poll` with no timeout, no round trip (`select.select`
    refuses descriptors from 1024 on, which a busy worker reaches); True when the socket
    cannot be looked at (asyncpg keeps it private), which costs a ping."""
    transport = getattr(driver, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    descriptor = sock.fileno() if sock is not None else -1
    if descriptor < 0:
        return True
    poller = select.poll()
    poller.register(descriptor, select.POLLIN)
    return bool(poller.poll(0))


def _check_on_checkout(
    dbapi_connection: Any, record: Any, _proxy: Any, *, ping_after: float
) -> None:
    """Pessimistic disconnect handling. A connection the server closed (restart, terminated
    backend, idle timeout) is known to asyncpg once the loop has read the close, and before
    that its socket has unread input: both checks are free. One that sat idle for
    `ping_after` seconds may have died unseen (failover, a proxy's timeout), so it is pinged
    in one round trip; SQLAlchemy's own `pool_pre_ping` takes three (BEGIN, ping, ROLLBACK).
    A busy pool, whose connections come back within milliseconds, pays no round trip. A
    connection that fails a check is replaced by a new one, so a database restart costs no
    request (a server dying between the check and the query still costs one: see
    `db.compiled.fetch`)."""
    driver = dbapi_connection.driver_connection
    if driver.is_closed():
        raise DisconnectionError("the server closed the connection")
    checked_in_at = record.info.get(_CHECKED_IN_AT)
    recently_used = checked_in_at is not None and time.monotonic() - checked_in_at < ping_after
    if recently_used and not _server_spoke(driver):
        return
    if _Checkout.at_once:
        record.info[_PING_PENDING] = True  # no awaiting here: `passes_pending_ping`
        return
    try:
        await_(driver.fetchrow(";"))
    except Exception as error:
        raise DisconnectionError(f"connection failed its ping: {error}") from error


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: objects returned by a committed use case stay readable by the
    # GraphQL layer without a lazy refresh (which `lazy="raise"` and async forbid anyway).
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def command_engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """An engine for a command (the outbox worker, the token and re-queue commands) on the
    settings' database, the embedded one without DATABASE_URL; disposed of at the end."""
    url = resolve_database_url(settings.database_url, settings.data_dir)
    engine = create_db_engine(url, settings)
    try:
        yield engine
    finally:
        await engine.dispose()
