"""SQLAlchemy statements compiled once to PostgreSQL text, run on the session's asyncpg
connection. For hot read paths: SQLAlchemy stays where the SQL is written (and where the rules
live), while each call skips statement construction, cache-key generation and result
processing, which cost more than the query itself for small keyed reads (docs/execution.md)."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import ClauseElement, Text, cast, event
from sqlalchemy.dialects.postgresql.asyncpg import dialect as AsyncpgDialect  # noqa: N812
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from db.reads import PooledReads

_dialect = AsyncpgDialect()  # type: ignore[no-untyped-call]

# asyncpg.Record: item access by column name (`row["id"]`), no ORM state.
Record = Any

Reader = AsyncSession | PooledReads
"""Where a compiled read runs: a request's pooled connection, or a session (inside its
transaction, when it has one)."""


@dataclass(frozen=True, slots=True)
class CompiledQuery:
    sql: str
    parameter_names: tuple[str, ...]

    def arguments(self, parameters: dict[str, Any]) -> list[Any]:
        return [parameters[name] for name in self.parameter_names]


def columns_named(
    model: type[Any], names: Sequence[str] | None, default: tuple[Any, ...]
) -> tuple[Any, ...]:
    """The columns of `default` (the full row, as read) called `names` (a subset a caller
    needs), or `default` for None."""
    if names is None:
        return default
    by_name = {column.key: column for column in default}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(f"{model.__name__} rows have no columns {unknown}")
    return tuple(by_name[name] for name in names)


def exact_text(column: Any) -> Any:
    """`column` read as PostgreSQL's own text of it, under the column's name. For money only
    passed on (read, then written into a response): numeric's text is exact, and decoding it
    into a Decimal costs more than the rest of its row (asyncpg: about 0.5 µs a value)."""
    return cast(column, Text).label(column.key)


def compile_query(statement: ClauseElement) -> CompiledQuery:
    """`statement` as SQL with `$n` placeholders; its bind parameters must all be named."""
    compiled = statement.compile(dialect=_dialect)
    positions = compiled.positiontup or ()  # type: ignore[attr-defined]
    return CompiledQuery(sql=compiled.string, parameter_names=tuple(positions))


_DRIVER_KEY = "db.compiled.driver_connection"


@event.listens_for(Session, "after_transaction_end")
def _forget_driver_connection(session: Session, _transaction: SessionTransaction) -> None:
    # The connection goes back to the pool with the transaction: never reuse it after that.
    session.info.pop(_DRIVER_KEY, None)


async def driver_connection(session: AsyncSession) -> Any:
    """The asyncpg connection the session is using (checked out from the pool if needed).
    Remembered for the session's transaction: finding it costs more than a small query."""
    driver = session.info.get(_DRIVER_KEY)
    if driver is None:
        connection = await session.connection()
        raw = await connection.get_raw_connection()
        driver = session.info[_DRIVER_KEY] = raw.driver_connection
    return driver


async def fetch(reader: Reader, query: CompiledQuery, **parameters: Any) -> list[Record]:
    """Run a read. Not for writes or `FOR UPDATE`: SQLAlchemy's adapter begins its database
    transaction lazily, on its own first statement, so a statement sent here before that runs
    in autocommit (harmless for a read under READ COMMITTED, wrong for a lock)."""
    if isinstance(reader, PooledReads):
        driver = await reader.driver()
    else:
        driver = await driver_connection(reader)
    try:
        rows: list[Record] = await driver.fetch(query.sql, *query.arguments(parameters))
    except Exception as error:
        if not driver.is_closed():
            raise
        # The server dropped the connection (restart, failover, idle kill). SQLAlchemy never
        # saw this statement, so tell the pool ourselves: the connection is discarded rather
        # than handed to the next request, and the caller learns the database is unavailable.
        if isinstance(reader, PooledReads):
            await reader.invalidate(error)
        else:
            reader.info.pop(_DRIVER_KEY, None)
            await (await reader.connection()).invalidate(error)
        raise ConnectionError("the database connection was lost") from error
    return rows


async def fetch_by_id(
    reader: Reader, query: CompiledQuery, ids: Sequence[int], **parameters: Any
) -> dict[int, Record]:
    """`query` with its `keys` parameter bound to an array of `ids`, its rows by their `id`
    column; ids that match no row are simply absent."""
    rows = await fetch(reader, query, keys=list(ids), **parameters)
    return {row["id"]: row for row in rows}


# What a statement that is its own transaction can lose to a concurrent one: a deadlock, a
# serialization failure, a unique key committed first. Run again in a transaction (retried on
# the first two, resolved by re-reading on the third), it finds its way.
_LOST_RACES = (asyncpg.exceptions.TransactionRollbackError, asyncpg.exceptions.UniqueViolationError)


async def run_alone(
    reads: PooledReads, query: CompiledQuery, **parameters: Any
) -> list[Record] | None:
    """Run one statement as a transaction of its own: the pooled connection runs none, so
    PostgreSQL commits the statement when it ends, and the locks it takes last only that long.
    For a write one statement makes whole. None when it lost a race with a concurrent
    transaction (rolled back, nothing written): the caller then runs its transaction."""
    try:
        return await fetch(reads, query, **parameters)
    except _LOST_RACES:
        return None
