"""The transactional outbox: notifications written in the transaction of the change they
announce, and delivered later, at least once, by `python -m services.worker`.

Delivery first claims due rows in a transaction of its own (`FOR UPDATE SKIP LOCKED`, so
concurrent workers never claim the same row): the claim counts the attempt and leases the row
(`next_attempt_at = now() + lease`), and is committed before anything is sent. A worker killed
mid-delivery has therefore used up an attempt, and its row is retried once the lease runs out,
by any worker; after the last allowed attempt it is `FAILED` like any other failure. Each outcome
is then committed on its own, fenced by the attempt it reports, so a late answer never
overwrites the outcome of a newer attempt. A crash after sending but before recording means a
second delivery, so receivers deduplicate on the notification id (the `Idempotency-Key`).

`FAILED` rows stay until an operator re-drives them (`requeue_failed`, behind
`python -m services.worker requeue-failed`); `backlog` gives the numbers to alert on.
"""

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import httpx
from sqlalchemy import ColumnElement, func, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.correlation import correlation_id_var, current_correlation_id
from core.tracing import continued_span, inject_trace_context, trace_context
from db.models import Notification, NotificationStatus
from db.transactions import run_in_transaction
from services.global_ids import to_global_id

logger = logging.getLogger(__name__)

MAX_ERROR_LENGTH = 2000
# Built once (see services.checkout._INSERT_ORDER): the table's insert, values bound per call.
_INSERT_NOTIFICATION = insert(Notification.metadata.tables[Notification.__tablename__])


def notification_values(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A notification's row: with the current correlation ID, so the delivery's log lines join
    the request that caused it, and its trace context, so the delivery joins its trace. (The
    one-statement order of services.checkout writes its row from these values too.)"""
    return {
        "kind": kind,
        "payload": payload,
        "correlation_id": current_correlation_id(),
        "trace_context": trace_context(),
    }


async def enqueue(session: AsyncSession, *, kind: str, payload: dict[str, Any]) -> None:
    """Record a notification in the caller's transaction (see `notification_values`)."""
    await session.execute(_INSERT_NOTIFICATION, notification_values(kind, payload))


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    id: int
    kind: str
    payload: dict[str, Any]
    correlation_id: str | None
    attempt: int
    trace_context: dict[str, str] | None = None


# The row ids a payload is stored with (the order's is written by the database, in the statement
# that inserts the order), and the types whose global IDs consumers are sent instead.
_ID_TYPES = {
    "orderId": "Order",
    "userId": "User",
    "productId": "Product",
    "reservationId": "Reservation",
}


def delivered_payload(payload: Any) -> Any:
    """The payload as consumers see it: every id a global ID, as in the API's answers (so a
    consumer can ask `node(id:)` for what a notification names)."""
    if isinstance(payload, dict):
        return {
            key: to_global_id(_ID_TYPES[key], value)
            if key in _ID_TYPES and isinstance(value, int)
            else delivered_payload(value)
            for key, value in payload.items()
        }
    if isinstance(payload, list):
        return [delivered_payload(value) for value in payload]
    return payload


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
            delivered_payload(message.payload),
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
        inject_trace_context(headers)  # the delivery's span: the receiver continues the trace
        response = await self.client.post(
            self.url,
            json={
                "id": message.id,
                "kind": message.kind,
                "payload": delivered_payload(message.payload),
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


def _due() -> tuple[ColumnElement[bool], ...]:
    return (
        Notification.status == NotificationStatus.PENDING,
        Notification.next_attempt_at <= func.now(),
    )


async def fail_exhausted(session: AsyncSession, *, max_attempts: int) -> int:
    """Mark `FAILED` the due rows whose last allowed attempt never reported back (its worker
    was killed, or lost the database): without this a notification that kills its worker
    would be retried forever, one lease apart. Returns how many."""
    exhausted = (
        select(Notification.id)
        .where(*_due(), Notification.attempts >= max_attempts)
        .with_for_update(skip_locked=True)
    )
    result = await session.execute(
        update(Notification)
        .where(Notification.id.in_(exhausted.scalar_subquery()))
        .values(
            status=NotificationStatus.FAILED,
            last_error=func.concat(
                "attempt ",
                Notification.attempts,
                " never finished (worker killed or lease expired)",
            ),
        )
        .returning(Notification.id, Notification.kind, Notification.attempts)
        .execution_options(synchronize_session=False)
    )
    rows = result.all()
    for row in rows:
        logger.error(
            "notification %d %s failed for good: attempt %d never finished",
            row.id,
            row.kind,
            row.attempts,
        )
    return len(rows)


async def claim_due(
    session: AsyncSession, *, batch_size: int, lease: timedelta
) -> list[OutboxMessage]:
    """Claim up to `batch_size` due rows, oldest due first: count their attempt and lease them
    for `lease`. Rows locked by another worker's claim are skipped. The caller commits before
    sending, so the attempt is counted even if the delivery never returns."""
    due = (
        select(Notification.id, Notification.next_attempt_at)
        .where(*_due())
        .order_by(Notification.next_attempt_at, Notification.id)
        .limit(batch_size)
        .with_for_update(skip_locked=True)
        .cte("due")
    )
    result = await session.execute(
        update(Notification)
        .where(Notification.id == due.c.id)
        .values(attempts=Notification.attempts + 1, next_attempt_at=func.now() + lease)
        .returning(
            Notification.id,
            Notification.kind,
            Notification.payload,
            Notification.correlation_id,
            Notification.attempts,
            Notification.trace_context,
            due.c.next_attempt_at.label("was_due_at"),
        )
        .execution_options(synchronize_session=False)
    )
    rows = sorted(result.all(), key=lambda row: (row.was_due_at, row.id))  # RETURNING: any order
    return [
        OutboxMessage(
            id=row.id,
            kind=row.kind,
            payload=row.payload,
            correlation_id=row.correlation_id,
            attempt=row.attempts,
            trace_context=row.trace_context,
        )
        for row in rows
    ]


async def release(session: AsyncSession, messages: list[OutboxMessage]) -> None:
    """Give back claimed rows that were never sent: their attempt uncounted, due right away
    (unless a newer claim has taken them since)."""
    await session.execute(
        update(Notification)
        .where(
            tuple_(Notification.id, Notification.attempts).in_(
                [(message.id, message.attempt) for message in messages]
            ),
            Notification.status == NotificationStatus.PENDING,
        )
        .values(attempts=Notification.attempts - 1, next_attempt_at=func.now())
        .execution_options(synchronize_session=False)
    )


async def record_delivered(session: AsyncSession, message: OutboxMessage) -> None:
    """A successful send is a fact whatever happened meanwhile: the row is `DELIVERED` even if
    its lease ran out and another attempt (or the last one's exhaustion) overtook this one."""
    await session.execute(
        update(Notification)
        .where(
            Notification.id == message.id,
            Notification.status != NotificationStatus.DELIVERED,
        )
        .values(status=NotificationStatus.DELIVERED, delivered_at=func.now(), last_error=None)
        .execution_options(synchronize_session=False)
    )


async def record_failure(
    session: AsyncSession, message: OutboxMessage, policy: RetryPolicy, error: Exception
) -> None:
    """Back off, or `FAILED` after the last attempt, unless a newer attempt has claimed the row
    since (its lease ran out): that attempt's outcome is the one to record."""
    description = f"{type(error).__name__}: {error}"[:MAX_ERROR_LENGTH]
    values: dict[str, Any] = {"last_error": description}
    if message.attempt >= policy.max_attempts:
        values["status"] = NotificationStatus.FAILED
    else:
        values["next_attempt_at"] = func.now() + policy.delay_after(message.attempt)
    result = await session.execute(
        update(Notification)
        .where(
            Notification.id == message.id,
            Notification.status == NotificationStatus.PENDING,
            Notification.attempts == message.attempt,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if not getattr(result, "rowcount", 0):
        logger.warning(
            "notification %d %s: attempt %d failed after its lease was overtaken: %s",
            message.id,
            message.kind,
            message.attempt,
            description,
        )
    elif message.attempt >= policy.max_attempts:
        logger.error(
            "notification %d %s failed for good after %d attempts: %s",
            message.id,
            message.kind,
            message.attempt,
            description,
        )
    else:
        logger.warning(
            "notification %d %s failed (attempt %d), retry in %ss: %s",
            message.id,
            message.kind,
            message.attempt,
            policy.delay_after(message.attempt).total_seconds(),
            description,
        )


async def deliver_due(
    session_factory: async_sessionmaker[AsyncSession],
    sender: Sender,
    *,
    batch_size: int,
    policy: RetryPolicy,
    lease: timedelta,
    transaction_attempts: int,
) -> int:
    """Claim a batch (committed), send each message, and commit each outcome on its own;
    returns how many rows were claimed. No transaction or connection is held while sending.
    Messages still unsent when half the lease is gone are released rather than sent late,
    so a slow receiver does not let another worker claim rows this one is about to send (the
    first is always sent: a batch makes progress however short the lease)."""
    async with session_factory() as session:
        claimed_at = time.monotonic()
        messages = await run_in_transaction(
            session,
            lambda s: _claim(s, batch_size=batch_size, lease=lease, policy=policy),
            attempts=transaction_attempts,
        )
        for index, message in enumerate(messages):
            if index and time.monotonic() - claimed_at > lease.total_seconds() / 2:
                await _release_rest(session, messages[index:], attempts=transaction_attempts)
                break
            await _deliver_one(session, sender, message, policy, attempts=transaction_attempts)
    return len(messages)


async def _claim(
    session: AsyncSession, *, batch_size: int, lease: timedelta, policy: RetryPolicy
) -> list[OutboxMessage]:
    await fail_exhausted(session, max_attempts=policy.max_attempts)
    return await claim_due(session, batch_size=batch_size, lease=lease)


async def _release_rest(
    session: AsyncSession, messages: list[OutboxMessage], *, attempts: int
) -> None:
    logger.warning(
        "%d claimed notifications released unsent: half their lease is gone", len(messages)
    )
    await run_in_transaction(session, lambda s: release(s, messages), attempts=attempts)


async def _deliver_one(
    session: AsyncSession,
    sender: Sender,
    message: OutboxMessage,
    policy: RetryPolicy,
    *,
    attempts: int,
) -> None:
    token = correlation_id_var.set(message.correlation_id)
    try:
        failure: Exception | None = None
        try:
            with continued_span(
                f"deliver {message.kind}", message.trace_context, _attributes(message)
            ):
                await sender.send(message)
        except Exception as error:  # every failure of a sender is a failed attempt, recorded
            failure = error
        await run_in_transaction(
            session,
            lambda s: (
                record_delivered(s, message)
                if failure is None
                else record_failure(s, message, policy, failure)
            ),
            attempts=attempts,
        )
    finally:
        correlation_id_var.reset(token)


def _attributes(message: OutboxMessage) -> dict[str, Any]:
    """What the delivery's span says of the notification (core.tracing.continued_span)."""
    return {
        "outbox.notification.id": message.id,
        "outbox.notification.kind": message.kind,
        "outbox.attempt": message.attempt,
        "correlation_id": message.correlation_id or "",
    }


@dataclass(frozen=True, slots=True)
class FailedFilter:
    """Which `FAILED` rows an operator re-drives: of this kind, and by age (since the
    notification was written); None matches any."""

    kind: str | None = None
    older_than: timedelta | None = None
    newer_than: timedelta | None = None

    def conditions(self) -> tuple[ColumnElement[bool], ...]:
        conditions: list[ColumnElement[bool]] = [Notification.status == NotificationStatus.FAILED]
        if self.kind is not None:
            conditions.append(Notification.kind == self.kind)
        if self.older_than is not None:
            conditions.append(Notification.created_at <= func.now() - self.older_than)
        if self.newer_than is not None:
            conditions.append(Notification.created_at > func.now() - self.newer_than)
        return tuple(conditions)


async def count_failed(session: AsyncSession, which: FailedFilter) -> int:
    """How many `FAILED` rows `requeue_failed` with the same filter would re-queue."""
    statement = select(func.count()).select_from(Notification).where(*which.conditions())
    return int(await session.scalar(statement) or 0)


async def requeue_failed(session: AsyncSession, which: FailedFilter) -> int:
    """Put `FAILED` notifications back in the queue after the outage that failed them: pending,
    due now, with their attempts reset to 0 so they get the whole retry schedule again (with the
    old count they would fail on their first new error). `last_error` is kept until the next
    outcome. Returns how many were re-queued."""
    result = await session.execute(
        update(Notification)
        .where(*which.conditions())
        .values(status=NotificationStatus.PENDING, attempts=0, next_attempt_at=func.now())
        .execution_options(synchronize_session=False)
    )
    requeued = int(getattr(result, "rowcount", 0) or 0)
    logger.info(
        "%d failed notifications re-queued (kind %s, older than %s, newer than %s)",
        requeued,
        which.kind or "any",
        which.older_than,
        which.newer_than,
    )
    return requeued


@dataclass(frozen=True, slots=True)
class Backlog:
    """What to alert on: `pending` and its oldest age grow while deliveries fail or no worker
    runs; `failed` rows wait for an operator to re-drive them."""

    pending: int
    failed: int
    oldest_pending_age_seconds: float  # 0 when nothing is pending


async def backlog(session: AsyncSession) -> Backlog:
    """The outbox's backlog in one read-only statement (each part reads a partial index: of
    pending rows, of failed rows)."""
    pending = Notification.status == NotificationStatus.PENDING
    row = (
        await session.execute(
            select(
                select(func.count()).select_from(Notification).where(pending).scalar_subquery(),
                select(func.count())
                .select_from(Notification)
                .where(Notification.status == NotificationStatus.FAILED)
                .scalar_subquery(),
                select(func.extract("epoch", func.now() - func.min(Notification.created_at)))
                .where(pending)
                .scalar_subquery(),
            )
        )
    ).one()
    pending_count, failed_count, oldest_age = row
    return Backlog(
        pending=int(pending_count),
        failed=int(failed_count),
        oldest_pending_age_seconds=max(float(oldest_age or 0), 0.0),
    )
