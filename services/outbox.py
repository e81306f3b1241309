"""The transactional outbox: notifications written in the transaction of the change they
announce, and delivered later, at least once, by `python -m services.worker`.

Delivery claims due rows with `SELECT … FOR UPDATE SKIP LOCKED` and keeps them locked until
their outcome is committed: concurrent workers never deliver the same row at once, and the row
of a worker that dies mid-delivery is unlocked by PostgreSQL when its connection drops, for the
next worker to deliver. A crash after sending but before the commit means a second delivery,
so receivers deduplicate on the notification id (sent as the `Idempotency-Key` header).
"""

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import httpx
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.correlation import correlation_id_var, current_correlation_id
from db.models import Notification, NotificationStatus

logger = logging.getLogger(__name__)

MAX_ERROR_LENGTH = 2000
# Built once (see services.checkout._INSERT_ORDER): the table's insert, values bound per call.
_INSERT_NOTIFICATION = insert(Notification.metadata.tables[Notification.__tablename__])


async def enqueue(session: AsyncSession, *, kind: str, payload: dict[str, Any]) -> None:
    """Record a notification in the caller's transaction, with the current correlation ID so
    the delivery's log lines join the request that caused it."""
    values = {"kind": kind, "payload": payload, "correlation_id": current_correlation_id()}
    await session.execute(_INSERT_NOTIFICATION, values)


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    id: int
    kind: str
    payload: dict[str, Any]
    correlation_id: str | None
    attempt: int


class Sender(Protocol):
    """Delivers one message or raises; any exception counts as a failed attempt."""

    async def send(self, message: OutboxMessage) -> None: ...


class LoggingSender:
    """The default sender: a log line per notification (for development and demos)."""

    async def send(self, message: OutboxMessage) -> None:
        logger.info(
            "notification %d %s delivered (attempt %d): %s",
            message.id,
            message.kind,
            message.attempt,
            message.payload,
        )


class WebhookSender:
    """POSTs each notification as JSON to a webhook; any non-2xx answer is a failure."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.url = url

    async def send(self, message: OutboxMessage) -> None:
        headers = {"Idempotency-Key": f"notification-{message.id}"}
        if message.correlation_id:
            headers["X-Correlation-ID"] = message.correlation_id
        response = await self.client.post(
            self.url,
            json={
                "id": message.id,
                "kind": message.kind,
                "payload": message.payload,
                "correlationId": message.correlation_id,
            },
            headers=headers,
        )
        response.raise_for_status()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    backoff_base_seconds: float
    backoff_max_seconds: float

    def delay_after(self, attempts: int) -> timedelta:
        """Exponential backoff: base, 2·base, 4·base… after the 1st, 2nd, 3rd failure."""
        seconds = self.backoff_base_seconds * 2 ** min(attempts - 1, 32)
        return timedelta(seconds=min(seconds, self.backoff_max_seconds))


async def deliver_due(
    session: AsyncSession, sender: Sender, *, batch_size: int, policy: RetryPolicy
) -> int:
    """Deliver up to `batch_size` due notifications in the caller's transaction and record each
    outcome; returns how many rows were claimed. Rows locked by another worker are skipped."""
    claimed = await session.execute(
        select(
            Notification.id,
            Notification.kind,
            Notification.payload,
            Notification.correlation_id,
            Notification.attempts,
        )
        .where(
            Notification.status == NotificationStatus.PENDING,
            Notification.next_attempt_at <= func.now(),
        )
        .order_by(Notification.next_attempt_at, Notification.id)
        .limit(batch_size)
        .with_for_update(skip_locked=True)
    )
    rows = claimed.all()
    for row in rows:
        message = OutboxMessage(
            id=row.id,
            kind=row.kind,
            payload=row.payload,
            correlation_id=row.correlation_id,
            attempt=row.attempts + 1,
        )
        await _deliver_one(session, sender, message, policy)
    return len(rows)


async def _deliver_one(
    session: AsyncSession, sender: Sender, message: OutboxMessage, policy: RetryPolicy
) -> None:
    token = correlation_id_var.set(message.correlation_id)
    try:
        try:
            await sender.send(message)
        except Exception as error:  # every failure of a sender is a failed attempt, recorded
            await _record_failure(session, message, policy, error)
        else:
            await session.execute(
                update(Notification)
                .where(Notification.id == message.id)
                .values(
                    status=NotificationStatus.DELIVERED,
                    attempts=message.attempt,
                    delivered_at=func.now(),
                    last_error=None,
                )
                .execution_options(synchronize_session=False)
            )
    finally:
        correlation_id_var.reset(token)


async def _record_failure(
    session: AsyncSession, message: OutboxMessage, policy: RetryPolicy, error: Exception
) -> None:
    description = f"{type(error).__name__}: {error}"[:MAX_ERROR_LENGTH]
    values: dict[str, Any] = {"attempts": message.attempt, "last_error": description}
    if message.attempt >= policy.max_attempts:
        values["status"] = NotificationStatus.FAILED
        logger.error(
            "notification %d %s failed for good after %d attempts: %s",
            message.id,
            message.kind,
            message.attempt,
            description,
        )
    else:
        delay = policy.delay_after(message.attempt)
        values["next_attempt_at"] = func.now() + delay
        logger.warning(
            "notification %d %s failed (attempt %d), retry in %ss: %s",
            message.id,
            message.kind,
            message.attempt,
            delay.total_seconds(),
            description,
        )
    await session.execute(
        update(Notification)
        .where(Notification.id == message.id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
