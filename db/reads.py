"""A request's reads outside any transaction, on a pooled connection and no ORM session.

A read-only GraphQL request needs one connection for its compiled statements (`db.compiled`)
and nothing of the ORM. An `AsyncSession` costs about 30 µs to create and close even when it
never connects, and its transaction bookkeeping about 35 µs more per checkout, together more
than the Python of a point read's own SQL. So reads take a connection straight from the
engine's pool (its checkout checks and `pool_recycle` still apply) and give it back at the end
of the request; a request that writes takes its session only then (gql/schema/context.py
hands out one or the other, never both at once)."""

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from db.engine import checkout_at_once, passes_pending_ping


class PooledReads:
    __slots__ = ("_connection", "_engine")

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._connection: Any = None  # SQLAlchemy's pooled DBAPI connection, while held

    @property
    def holds_connection(self) -> bool:
        return self._connection is not None

    async def driver(self) -> Any:
        """The asyncpg connection, checked out from the pool at the first call."""
        if self._connection is None:
            self._connection = await self._checkout()
        return self._connection.driver_connection

    async def _checkout(self) -> Any:
        """A ready connection straight from the pool, else the awaited way (which opens
        connections, waits for one to come back, and pings on the spot)."""
        connection = checkout_at_once(self._engine)
        if connection is None:
            return await self._engine.raw_connection()
        if await passes_pending_ping(connection):
            return connection
        await greenlet_spawn(connection.invalidate)
        return await self._engine.raw_connection()

    async def release(self) -> None:
        """Back to the pool (reset there: it ran no transaction, so no round trip)."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        driver = connection.driver_connection
        if driver.is_in_transaction():
            # Begun on the driver, unknown to SQLAlchemy (whose reset would leave it open):
            # nothing here does that, but a connection in a stray transaction is not reused.
            await greenlet_spawn(connection.invalidate)
            return
        if driver.is_closed():
            # The pool's handling of a closed connection awaits the driver: SQLAlchemy's sync
            # code then needs its greenlet.
            await greenlet_spawn(connection.close)
            return
        # An open connection in no transaction: the pool's reset and check-in await nothing,
        # so they run here, without the greenlet's hop (a third of checkout and release;
        # tests/test_request_connections.py pins that nothing awaits on this path).
        connection.close()

    async def invalidate(self, error: BaseException) -> None:
        """The connection failed: the pool discards it instead of handing it out again."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await greenlet_spawn(connection.invalidate, error)
