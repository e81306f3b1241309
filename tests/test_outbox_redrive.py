"""Re-driving the outbox after an outage: FAILED notifications re-queued by an operator (all, by
kind, by age), the backlog measured on /metrics for alerts, and attempts that count even when
their delivery never returns."""

import asyncio
import os
import re
import sys
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.settings import Settings
from db.models import Notification, NotificationStatus
from db.transactions import run_in_transaction
from services import outbox
from services.outbox import OutboxMessage
from services.worker import deliver_once, parse_age
from tests.edge_support import app_client, captured_logs, free_port
from tests.test_outbox_worker import PROJECT_ROOT, RecordingSender, add_notifications, notifications


async def set_rows(
    session_factory: async_sessionmaker[AsyncSession],
    ids: list[int],
    *,
    status: NotificationStatus,
    kind: str = "test.event",
    age: timedelta = timedelta(0),
    attempts: int = 0,
) -> None:
    async with session_factory() as session, session.begin():
        await session.execute(
            update(Notification)
            .where(Notification.id.in_(ids))
            .values(
                status=status,
                kind=kind,
                attempts=attempts,
                created_at=func.now() - age,
                next_attempt_at=func.now() - age,
                last_error="ConnectionError: webhook unreachable",
            )
        )


async def failed_outage(session_factory: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    """FAILED rows of two kinds and three ages, a pending one and a delivered one."""
    ids = await add_notifications(session_factory, 6)
    names = ["created_2d", "created_2h", "cancelled_2h", "created_5m", "pending", "delivered"]
    rows = dict(zip(names, ids, strict=True))
    outage = [
        ("created_2d", "order.created", timedelta(days=2)),
        ("created_2h", "order.created", timedelta(hours=2)),
        ("cancelled_2h", "order.cancelled", timedelta(hours=2)),
        ("created_5m", "order.created", timedelta(minutes=5)),
    ]
    for name, kind, age in outage:
        await set_rows(
            session_factory,
            [rows[name]],
            status=NotificationStatus.FAILED,
            kind=kind,
            age=age,
            attempts=8,
        )
    await set_rows(
        session_factory, [rows["delivered"]], status=NotificationStatus.DELIVERED, attempts=1
    )
    return rows


async def requeue(
    session_factory: async_sessionmaker[AsyncSession],
    *,
    kind: str | None = None,
    older_than: timedelta | None = None,
    newer_than: timedelta | None = None,
) -> int:
    async with session_factory() as session:
        return await run_in_transaction(
            session,
            lambda s: outbox.requeue_failed(
                s, outbox.FailedFilter(kind=kind, older_than=older_than, newer_than=newer_than)
            ),
            attempts=1,
        )


async def statuses(session_factory: async_sessionmaker[AsyncSession]) -> dict[int, tuple[str, int]]:
    return {
        row.id: (row.status.value, row.attempts) for row in await notifications(session_factory)
    }


# --- Re-queueing FAILED notifications ---------------------------------------------------------


async def test_requeue_puts_every_failed_row_back_due_now_with_a_fresh_schedule(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    rows = await failed_outage(session_factory)
    assert await requeue(session_factory) == 4
    after = await statuses(session_factory)
    assert after == {
        rows["created_2d"]: ("PENDING", 0),
        rows["created_2h"]: ("PENDING", 0),
        rows["cancelled_2h"]: ("PENDING", 0),
        rows["created_5m"]: ("PENDING", 0),
        rows["pending"]: ("PENDING", 0),
        rows["delivered"]: ("DELIVERED", 1),
    }
    # Due right away: the next worker batch delivers all five pending rows.
    sender = RecordingSender()
    assert await deliver_once(session_factory, sender, Settings()) == 5
    assert sorted(sender.delivered) == sorted(set(rows.values()) - {rows["delivered"]})
    assert await requeue(session_factory) == 0


async def test_requeue_by_kind_and_age(session_factory: async_sessionmaker[AsyncSession]) -> None:
    rows = await failed_outage(session_factory)

    assert await requeue(session_factory, kind="order.cancelled") == 1
    assert (await statuses(session_factory))[rows["cancelled_2h"]] == ("PENDING", 0)

    # Written more than an hour but less than a day ago, of the one kind.
    between = await requeue(
        session_factory,
        kind="order.created",
        older_than=timedelta(hours=1),
        newer_than=timedelta(days=1),
    )
    assert between == 1
    after = await statuses(session_factory)
    assert after[rows["created_2h"]] == ("PENDING", 0)
    assert after[rows["created_2d"]] == after[rows["created_5m"]] == ("FAILED", 8)

    assert await requeue(session_factory, newer_than=timedelta(minutes=10)) == 1
    assert (await statuses(session_factory))[rows["created_5m"]] == ("PENDING", 0)
    assert await requeue(session_factory, older_than=timedelta(days=1)) == 1
    assert (await statuses(session_factory))[rows["created_2d"]] == ("PENDING", 0)


async def run_command(database_url: str, *arguments: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.worker",
        *arguments,
        cwd=PROJECT_ROOT,
        env={**os.environ, "DATABASE_URL": database_url, "ENVIRONMENT": "production"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_the_requeue_command_counts_then_requeues(
    database_url: str, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    """The operator's command (also in production, where the worker itself needs a webhook)."""
    rows = await failed_outage(session_factory)
    filters = ("--kind", "order.created", "--older-than", "1h")

    code, out, err = await run_command(database_url, "requeue-failed", *filters, "--dry-run")
    assert code == 0, err
    assert out.strip() == "2 failed notifications would be re-queued (dry run)"
    assert (await statuses(session_factory))[rows["created_2h"]] == ("FAILED", 8)

    code, out, err = await run_command(database_url, "requeue-failed", *filters)
    assert code == 0, err
    assert out.strip() == "2 failed notifications re-queued"
    after = await statuses(session_factory)
    assert after[rows["created_2h"]] == after[rows["created_2d"]] == ("PENDING", 0)
    assert after[rows["created_5m"]] == after[rows["cancelled_2h"]] == ("FAILED", 8)

    code, _, err = await run_command(database_url, "requeue-failed", "--older-than", "soon")
    assert code == 2
    assert "not an age" in err


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("1.5h", 5400), ("2d", 172800)]
)
def test_ages_of_the_command_line(text: str, seconds: float) -> None:
    assert parse_age(text) == timedelta(seconds=seconds)


# --- The backlog on /metrics ------------------------------------------------------------------


def gauge(metrics: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", metrics, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match[1])


async def test_metrics_show_pending_failed_and_the_oldest_pending_age(
    client: httpx.AsyncClient, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    rows = await failed_outage(session_factory)
    await set_rows(
        session_factory,
        [rows["pending"]],
        status=NotificationStatus.PENDING,
        age=timedelta(hours=1),
    )
    metrics = (await client.get("/metrics")).text
    assert gauge(metrics, "outbox_pending_messages") == 1
    assert gauge(metrics, "outbox_failed_messages") == 4
    assert 3600 <= gauge(metrics, "outbox_oldest_pending_age_seconds") < 3660


async def test_an_empty_outbox_has_no_pending_age(client: httpx.AsyncClient) -> None:
    metrics = (await client.get("/metrics")).text
    assert gauge(metrics, "outbox_pending_messages") == 0
    assert gauge(metrics, "outbox_failed_messages") == 0
    assert gauge(metrics, "outbox_oldest_pending_age_seconds") == 0


async def test_metrics_read_the_backlog_at_most_once_per_interval(
    database_url: str, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    """/metrics needs no credentials: scraping it in a loop must not scan the table each time."""
    async with app_client(database_url, outbox_metrics_interval_seconds=3600) as (_, client):
        first = (await client.get("/metrics")).text
        await add_notifications(session_factory, 3)
        second = (await client.get("/metrics")).text
    assert gauge(first, "outbox_pending_messages") == 0
    assert gauge(second, "outbox_pending_messages") == 0
    async with app_client(database_url, outbox_metrics_interval_seconds=0) as (_, client):
        assert gauge((await client.get("/metrics")).text, "outbox_pending_messages") == 3


async def test_metrics_answer_with_the_last_values_when_the_database_is_down() -> None:
    closed = f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/nothing"
    before = REGISTRY.get_sample_value("outbox_failed_messages")
    async with app_client(closed) as (_, client), captured_logs() as logs:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert gauge(response.text, "outbox_failed_messages") == before
    warnings = [line for line in logs.lines if "outbox backlog not read" in line["message"]]
    assert [line["level"] for line in warnings] == ["WARNING"]


# --- Attempts that never return ---------------------------------------------------------------


@dataclass
class HangingSender:
    """A receiver that never answers: the delivery is stuck until its task is cancelled."""

    entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, message: OutboxMessage) -> None:
        self.entered.set()
        await asyncio.Event().wait()


async def interrupted_delivery(
    session_factory: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    """A worker's batch cancelled mid-send: nothing after the claim runs."""
    sender = HangingSender()
    task = asyncio.create_task(deliver_once(session_factory, sender, settings))
    await asyncio.wait_for(sender.entered.wait(), timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def make_due(session_factory: async_sessionmaker[AsyncSession]) -> None:
    async with session_factory() as session, session.begin():
        await session.execute(update(Notification).values(next_attempt_at=func.now()))


async def test_an_interrupted_delivery_counts_and_is_retried_after_its_lease(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    (note_id,) = await add_notifications(session_factory, 1)
    settings = Settings(outbox_lease_seconds=120)
    await interrupted_delivery(session_factory, settings)

    async with session_factory() as session:
        attempts, due_in = (
            await session.execute(
                select(
                    Notification.attempts,
                    func.extract("epoch", Notification.next_attempt_at - func.now()),
                )
            )
        ).one()
    assert attempts == 1
    assert 100 < float(due_in) <= 120  # leased, not retried right away
    sender = RecordingSender()
    assert await deliver_once(session_factory, sender, settings) == 0

    await make_due(session_factory)  # the lease ran out
    assert await deliver_once(session_factory, sender, settings) == 1
    assert sender.delivered == [note_id]
    (note,) = await notifications(session_factory)
    assert (note.status, note.attempts) == (NotificationStatus.DELIVERED, 2)


async def test_a_last_attempt_that_never_finished_fails_the_row(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    """Else a notification that kills its worker would be retried forever, a lease apart."""
    await add_notifications(session_factory, 1)
    settings = Settings(outbox_max_attempts=2)
    await interrupted_delivery(session_factory, settings)
    await make_due(session_factory)
    await interrupted_delivery(session_factory, settings)
    await make_due(session_factory)

    sender = RecordingSender()
    assert await deliver_once(session_factory, sender, settings) == 0
    assert sender.delivered == []
    (note,) = await notifications(session_factory)
    assert (note.status, note.attempts) == (NotificationStatus.FAILED, 2)
    assert note.last_error == "attempt 2 never finished (worker killed or lease expired)"


async def test_rows_still_unsent_after_half_the_lease_are_given_back(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    """A slow receiver: rather than send a row another worker may claim any moment, the
    worker gives it back, its attempt uncounted."""
    first, *rest = await add_notifications(session_factory, 3)
    settings = Settings(outbox_batch_size=3, outbox_lease_seconds=0.2)
    sender = RecordingSender(delay=0.15)
    assert await deliver_once(session_factory, sender, settings) == 3
    assert sender.delivered == [first]
    after = await statuses(session_factory)
    assert after == {first: ("DELIVERED", 1), **{note_id: ("PENDING", 0) for note_id in rest}}
    assert await deliver_once(session_factory, RecordingSender(), settings) == 2


async def test_a_late_failure_does_not_overwrite_a_newer_attempt(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    """The outcome of an attempt whose lease was overtaken is not the row's any more."""
    await add_notifications(session_factory, 1)
    lease = timedelta(seconds=60)
    policy = outbox.RetryPolicy(max_attempts=2, backoff_base_seconds=1, backoff_max_seconds=1)

    async def claim() -> OutboxMessage:
        async with session_factory() as session:
            (message,) = await run_in_transaction(
                session, lambda s: outbox.claim_due(s, batch_size=1, lease=lease), attempts=1
            )
            return message

    stale = await claim()
    await make_due(session_factory)
    newer = await claim()
    async with session_factory() as session, session.begin():
        await outbox.record_failure(session, stale, policy, ConnectionError("late"))
    (note,) = await notifications(session_factory)
    assert (note.status, note.attempts, note.last_error) == (NotificationStatus.PENDING, 2, None)
    async with session_factory() as session, session.begin():
        await outbox.record_delivered(session, newer)
    (note,) = await notifications(session_factory)
    assert (note.status, note.attempts) == (NotificationStatus.DELIVERED, 2)
