"""`python -m services.worker`: delivers the notification outbox and sweeps expired holds.

Run as many as you like, on any machine that reaches the database: rows are claimed with
`FOR UPDATE SKIP LOCKED` and holds are expired by conditional UPDATEs, so workers never do the
same delivery or give the same stock back twice. SIGINT/SIGTERM stop it after the current batch.
"""

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.logging import configure_logging
from core.settings import Settings, get_settings
from db.embedded import resolve_database_url
from db.engine import create_db_engine, create_session_factory
from db.transactions import run_in_transaction
from services import outbox, reservations

logger = logging.getLogger("services.worker")


def retry_policy(settings: Settings) -> outbox.RetryPolicy:
    return outbox.RetryPolicy(
        max_attempts=settings.outbox_max_attempts,
        backoff_base_seconds=settings.outbox_backoff_base_seconds,
        backoff_max_seconds=settings.outbox_backoff_max_seconds,
    )


async def deliver_once(
    session_factory: async_sessionmaker[AsyncSession],
    sender: outbox.Sender,
    settings: Settings,
) -> int:
    """One batch of due notifications in one transaction; returns how many were claimed."""
    async with session_factory() as session:
        return await run_in_transaction(
            session,
            lambda s: outbox.deliver_due(
                s,
                sender,
                batch_size=settings.outbox_batch_size,
                policy=retry_policy(settings),
            ),
            attempts=settings.db_transaction_attempts,
        )


async def sweep_once(session_factory: async_sessionmaker[AsyncSession], settings: Settings) -> int:
    """Expire one batch of lapsed holds and give their stock back; returns how many."""
    async with session_factory() as session:
        return await run_in_transaction(
            session,
            lambda s: reservations.release_expired_holds(s, limit=settings.hold_sweep_batch_size),
            attempts=settings.db_transaction_attempts,
        )


@contextlib.asynccontextmanager
async def sender_from_settings(settings: Settings) -> AsyncIterator[outbox.Sender]:
    """The webhook sender when WEBHOOK_URL is set, else the logging one."""
    if not settings.webhook_url:
        yield outbox.LoggingSender()
        return
    async with httpx.AsyncClient(timeout=settings.webhook_timeout_seconds) as client:
        yield outbox.WebhookSender(client, settings.webhook_url)


async def _every(
    name: str,
    interval: float,
    stop: asyncio.Event,
    step: Callable[[], Awaitable[int]],
    *,
    full: int,
) -> None:
    """Run `step` until `stop`; right away again after a full batch, else after `interval`.
    A failing step (database down…) is logged and retried after the interval, never fatal."""
    failing = False
    while not stop.is_set():
        try:
            done = await step()
            failing = False
        except Exception as error:  # the loop must outlive a bad moment of the database
            if failing:  # the stack was logged when this run of failures began
                logger.warning("%s still failing (%s); retrying in %ss", name, error, interval)
            else:
                logger.exception("%s failed; retrying in %ss", name, interval)
            failing = True
            done = 0
        if done >= full:
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


async def run_worker(
    settings: Settings, *, stop: asyncio.Event, sender: outbox.Sender | None = None
) -> None:
    """Deliver the outbox and sweep expired holds until `stop` is set."""
    url = resolve_database_url(settings.database_url, settings.data_dir)
    engine = create_db_engine(url, settings)
    session_factory = create_session_factory(engine)
    try:
        async with contextlib.AsyncExitStack() as stack:
            if sender is None:
                sender = await stack.enter_async_context(sender_from_settings(settings))
            chosen = sender
            logger.info("worker started (sender: %s)", type(chosen).__name__)
            await asyncio.gather(
                _every(
                    "outbox delivery",
                    settings.outbox_poll_interval_seconds,
                    stop,
                    lambda: deliver_once(session_factory, chosen, settings),
                    full=settings.outbox_batch_size,
                ),
                _every(
                    "hold sweep",
                    settings.hold_sweep_interval_seconds,
                    stop,
                    lambda: sweep_once(session_factory, settings),
                    full=settings.hold_sweep_batch_size,
                ),
            )
    finally:
        await engine.dispose()
        logger.info("worker stopped")


def main() -> None:
    settings = get_settings()
    if settings.is_production and not settings.webhook_url:
        # The logging sender marks every notification DELIVERED: in production a missing
        # WEBHOOK_URL would silently lose them all.
        raise SystemExit("refusing to start: ENVIRONMENT=production needs WEBHOOK_URL")
    # The service's JSON lines, each with the correlation ID of the delivery in progress.
    configure_logging(settings.log_level, json=settings.log_json)
    logging.getLogger("httpx").setLevel(logging.WARNING)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await run_worker(settings, stop=stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
