"""`python -m services.worker`: delivers the notification outbox and sweeps expired holds.

Run as many as you like, on any machine that reaches the database: rows are claimed with
`FOR UPDATE SKIP LOCKED` and holds are expired by conditional UPDATEs, so workers never do the
same delivery or give the same stock back twice. SIGINT/SIGTERM stop it after the current batch.

`python -m services.worker requeue-failed [--kind K] [--older-than AGE] [--newer-than AGE]
[--dry-run]` puts `FAILED` notifications back in the queue once their receiver is back.
"""

import argparse
import asyncio
import contextlib
import logging
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.logging import configure_logging
from core.settings import Settings, get_settings
from core.tracing import start_tracing, stop_tracing
from db.engine import command_engine, create_session_factory
from db.transactions import in_one_transaction, run_in_transaction
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
    """One batch of due notifications: claimed in one transaction, each outcome in its own;
    returns how many were claimed."""
    return await outbox.deliver_due(
        session_factory,
        sender,
        batch_size=settings.outbox_batch_size,
        policy=retry_policy(settings),
        lease=timedelta(seconds=settings.outbox_lease_seconds),
        transaction_attempts=settings.db_transaction_attempts,
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
    try:
        async with command_engine(settings) as engine, contextlib.AsyncExitStack() as stack:
            session_factory = create_session_factory(engine)
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
        logger.info("worker stopped")


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_AGE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str) -> timedelta:
    """`90`, `90s`, `15m`, `1h`, `2d`: an age for the command line."""
    match = _AGE.match(text.lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"not an age: {text!r} (e.g. 90s, 15m, 1h, 2d)")
    return timedelta(seconds=float(match[1]) * _AGE_UNITS[match[2]])


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.worker",
        description="Deliver the notification outbox and sweep expired holds (no command).",
    )
    commands = parser.add_subparsers(dest="command")
    requeue = commands.add_parser(
        "requeue-failed",
        help="put FAILED notifications back in the queue, with a fresh retry schedule",
        description="FAILED notifications back to pending, due now, attempts reset to 0. "
        "Ages count from when the notification was written.",
    )
    requeue.add_argument("--kind", help="only this kind (e.g. order.created)")
    requeue.add_argument("--older-than", type=parse_age, metavar="AGE", help="e.g. 1h")
    requeue.add_argument("--newer-than", type=parse_age, metavar="AGE", help="e.g. 2d")
    requeue.add_argument("--dry-run", action="store_true", help="count, change nothing")
    return parser.parse_args(argv)


async def requeue_failed(settings: Settings, which: outbox.FailedFilter, *, dry_run: bool) -> int:
    """The `requeue-failed` command: how many matched (and, unless a dry run, were re-queued)."""
    work = outbox.count_failed if dry_run else outbox.requeue_failed
    return await in_one_transaction(settings, lambda session: work(session, which))


def main(argv: Sequence[str] | None = None) -> None:
    arguments = _arguments(argv)
    settings = get_settings()
    if arguments.command == "requeue-failed":
        which = outbox.FailedFilter(arguments.kind, arguments.older_than, arguments.newer_than)
        count = asyncio.run(requeue_failed(settings, which, dry_run=arguments.dry_run))
        verb = "would be re-queued (dry run)" if arguments.dry_run else "re-queued"
        print(f"{count} failed notifications {verb}")
        return
    run(settings)


def run(settings: Settings) -> None:
    """The worker until SIGINT/SIGTERM."""
    if settings.is_production and not settings.webhook_url:
        # The logging sender marks every notification DELIVERED: in production a missing
        # WEBHOOK_URL would silently lose them all.
        raise SystemExit("refusing to start: ENVIRONMENT=production needs WEBHOOK_URL")
    # The service's JSON lines, each with the correlation ID of the delivery in progress.
    configure_logging(settings.log_level, json=settings.log_json)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if (
        settings.webhook_url
        and settings.outbox_lease_seconds < 2 * settings.webhook_timeout_seconds
    ):
        logger.warning(
            "OUTBOX_LEASE_SECONDS (%s) under twice WEBHOOK_TIMEOUT_SECONDS (%s): a slow delivery "
            "may be retried by another worker while it is still running",
            settings.outbox_lease_seconds,
            settings.webhook_timeout_seconds,
        )

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await run_worker(settings, stop=stop)

    # OTEL_* (core/tracing.py): each delivery continues the trace of the request it announces.
    start_tracing("booking-worker")
    try:
        asyncio.run(serve())
    finally:
        stop_tracing()


if __name__ == "__main__":
    main()
