"""One unit of work per transaction, retried when PostgreSQL aborted it only because of a
concurrent transaction (deadlock, serialization failure) or when the work asks for a retry."""

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from core.settings import Settings
from db.engine import command_engine, create_session_factory

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")

DEADLOCK_DETECTED = "40P01"
SERIALIZATION_FAILURE = "40001"
UNIQUE_VIOLATION = "23505"
RETRYABLE_SQLSTATES = frozenset({DEADLOCK_DETECTED, SERIALIZATION_FAILURE})


class RetryTransaction(Exception):
    """Raised by a unit of work whose transaction lost a race it can resolve by starting over
    (e.g. a concurrent insert of the same unique key, now committed and visible)."""


def sqlstate_of(error: DBAPIError) -> str | None:
    sqlstate: str | None = getattr(error.orig, "sqlstate", None)
    return sqlstate


def violated_constraint(error: DBAPIError) -> str | None:
    """The name of the constraint a unique/check/FK violation names (asyncpg reports it)."""
    driver_error = getattr(error.orig, "__cause__", None)
    name: str | None = getattr(driver_error, "constraint_name", None)
    return name


def is_retryable(error: BaseException) -> bool:
    if isinstance(error, RetryTransaction):
        return True
    return isinstance(error, DBAPIError) and sqlstate_of(error) in RETRYABLE_SQLSTATES


async def run_in_transaction(
    session: AsyncSession,
    work: Callable[[AsyncSession], Awaitable[ResultT]],
    *,
    attempts: int,
) -> ResultT:
    """Run `work` in its own transaction on `session`: committed if it returns, rolled back if
    it raises. A transaction aborted by a concurrent one is retried from the start, up to
    `attempts` times in all, so a deadlock reaches no client unless it keeps happening."""
    for attempt in range(1, attempts + 1):
        try:
            async with session.begin():
                return await work(session)
        except (DBAPIError, RetryTransaction) as error:
            if not is_retryable(error) or attempt == attempts:
                raise
            logger.warning("transaction retried (attempt %d): %s", attempt, type(error).__name__)
            # A little jitter so that the transactions that collided do not collide again.
            await asyncio.sleep(random.uniform(0, 0.01 * attempt))
    raise AssertionError("unreachable")  # pragma: no cover


async def in_one_transaction(
    settings: Settings, work: Callable[[AsyncSession], Awaitable[ResultT]]
) -> ResultT:
    """A command's one unit of work: `work` in one (retried) transaction on an engine of its
    own (`command_engine`)."""
    async with command_engine(settings) as engine, create_session_factory(engine)() as session:
        return await run_in_transaction(session, work, attempts=settings.db_transaction_attempts)
