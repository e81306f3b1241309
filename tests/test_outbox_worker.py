"""The outbox and its worker: written with the change, delivered once per claim by any number of
workers, retried with backoff, and retried after the lease when a worker dies mid-delivery."""

import asyncio
import contextlib
import json
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.correlation import correlation_id_var, current_correlation_id
from core.settings import Settings
from db.models import Notification, NotificationStatus
from db.transactions import run_in_transaction
from gql.schema.ids import to_global_id
from services import checkout
from services.auth import Actor
from services.outbox import OutboxMessage, WebhookSender
from services.worker import deliver_once
from tests.conftest import GraphQL
from tests.factories import Factory
from tests.test_checkout import CREATE_ORDER, order_input, pid

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RecordingSender:
    """Delivers by remembering; slow enough that concurrent workers overlap."""

    delay: float = 0.0
    fail: bool = False
    delivered: list[int] = field(default_factory=list)
    correlation_ids: list[str | None] = field(default_factory=list)

    async def send(self, message: OutboxMessage) -> None:
        self.correlation_ids.append(current_correlation_id())
        await asyncio.sleep(self.delay)
        if self.fail:
            raise ConnectionError("webhook unreachable")
        self.delivered.append(message.id)


async def add_notifications(
    session_factory: async_sessionmaker[AsyncSession], count: int
) -> list[int]:
    async with session_factory() as session, session.begin():
        result = await session.execute(
            insert(Notification)
            .values(
                [
                    {"kind": "test.event", "payload": {"n": n}, "correlation_id": f"corr-{n}"}
                    for n in range(count)
                ]
            )
            .returning(Notification.id)
        )
        return list(result.scalars())


async def notifications(session_factory: async_sessionmaker[AsyncSession]) -> list[Notification]:
    async with session_factory() as session:
        rows = await session.execute(select(Notification).order_by(Notification.id))
        return list(rows.scalars())


async def test_an_order_writes_its_notification_with_the_correlation_id(
    factory: Factory, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    user, _ = await factory.user()
    product = await factory.product(stock=3)
    request = checkout.OrderRequest(
        lines=(checkout.OrderLine(product_id=product.id, quantity=2),), idempotency_key="k"
    )
    token = correlation_id_var.set("req-123")
    try:
        async with session_factory() as session:
            result = await run_in_transaction(
                session,
                lambda s: checkout.create_order(
                    s, Actor(user_id=user.id, is_admin=False), request, settings=Settings()
                ),
                attempts=1,
            )
    finally:
        correlation_id_var.reset(token)
    (note,) = await notifications(session_factory)
    assert note.kind == "order.created"
    assert note.correlation_id == "req-123"
    assert note.status is NotificationStatus.PENDING
    assert note.payload["orderId"] == result.order["id"]
    assert note.payload["items"] == [
        {"productId": product.id, "quantity": 2, "unitPrice": "100.00"}
    ]


async def test_concurrent_workers_never_deliver_a_row_twice(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    ids = await add_notifications(session_factory, 40)
    settings = Settings(outbox_batch_size=3)
    sender = RecordingSender(delay=0.002)

    async def worker() -> int:
        claimed = 0
        while batch := await deliver_once(session_factory, sender, settings):
            claimed += batch
        return claimed

    claimed = await asyncio.gather(*(worker() for _ in range(4)))

    assert sum(claimed) == 40
    assert Counter(sender.delivered) == Counter(ids)
    rows = await notifications(session_factory)
    assert {(row.status, row.attempts) for row in rows} == {(NotificationStatus.DELIVERED, 1)}
    assert all(row.delivered_at is not None for row in rows)


async def test_the_correlation_id_is_current_while_delivering(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    await add_notifications(session_factory, 3)
    sender = RecordingSender()
    await deliver_once(session_factory, sender, Settings())
    assert sender.correlation_ids == ["corr-0", "corr-1", "corr-2"]
    assert current_correlation_id() is None


async def test_failed_deliveries_back_off_then_fail_for_good(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    (note_id,) = await add_notifications(session_factory, 1)
    settings = Settings(outbox_max_attempts=3, outbox_backoff_base_seconds=60)
    sender = RecordingSender(fail=True)

    async def due_in() -> float:
        async with session_factory() as session:
            seconds = await session.scalar(
                select(func.extract("epoch", Notification.next_attempt_at - func.now()))
            )
            return float(seconds)

    async def make_due() -> None:
        async with session_factory() as session, session.begin():
            await session.execute(update(Notification).values(next_attempt_at=func.now()))

    assert await deliver_once(session_factory, sender, settings) == 1
    assert 30 < await due_in() <= 60  # base delay after the 1st failure
    assert await deliver_once(session_factory, sender, settings) == 0  # not due yet
    await make_due()
    assert await deliver_once(session_factory, sender, settings) == 1
    assert 90 < await due_in() <= 120  # doubled after the 2nd
    (note,) = await notifications(session_factory)
    assert (note.status, note.attempts) == (NotificationStatus.PENDING, 2)
    assert note.last_error == "ConnectionError: webhook unreachable"

    await make_due()
    assert await deliver_once(session_factory, sender, settings) == 1
    (note,) = await notifications(session_factory)
    assert note.id == note_id
    assert (note.status, note.attempts) == (NotificationStatus.FAILED, 3)
    await make_due()
    assert await deliver_once(session_factory, sender, settings) == 0


class Webhook:
    """A real HTTP endpoint on a free loopback port that records requests; while `hang` is
    set it never answers, like a receiver stuck mid-delivery."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.received = asyncio.Event()
        self.hang = True
        self.status = 204
        self._release = asyncio.Event()
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append((headers, json.loads(body)))
            self.received.set()
            if self.hang:
                await self._release.wait()
                return
            writer.write(
                f"HTTP/1.1 {self.status} Answer\r\nContent-Length: 0\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator["Webhook"]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hooks/booking"
        try:
            yield self
        finally:
            self._release.set()
            server.close()
            await server.wait_closed()


async def attempts_and_lease(
    session_factory: async_sessionmaker[AsyncSession], note_id: int
) -> tuple[NotificationStatus, int, float]:
    """The row as another connection sees it: status, attempts, seconds until it is due."""
    async with session_factory() as session:
        row = (
            await session.execute(
                select(
                    Notification.status,
                    Notification.attempts,
                    func.extract("epoch", Notification.next_attempt_at - func.now()),
                ).where(Notification.id == note_id)
            )
        ).one()
        return row[0], row[1], float(row[2])


async def test_a_worker_killed_mid_delivery_has_used_an_attempt_and_its_row_waits_for_the_lease(
    database_url: str, session_factory: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    """The attempt is counted, and committed, before the send: a worker killed with -9 while
    its receiver hangs has used it up, and its row is retried by another worker once the lease
    runs out (not right away, not never)."""
    (note_id,) = await add_notifications(session_factory, 1)
    lease = 5.0
    async with Webhook().serve() as webhook:
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "WEBHOOK_URL": webhook.url,
            "WEBHOOK_TIMEOUT_SECONDS": "300",
            "OUTBOX_LEASE_SECONDS": str(lease),
            "OUTBOX_POLL_INTERVAL_SECONDS": "0.1",
            "HOLD_SWEEP_INTERVAL_SECONDS": "60",
            "ENVIRONMENT": "test",
        }
        log = (tmp_path / "worker.log").open("wb")
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.worker",
            env=env,
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=log,
        )
        try:
            await asyncio.wait_for(webhook.received.wait(), timeout=60)
            # The worker is inside the delivery; its claim is committed, with the attempt.
            status, attempts, due_in = await attempts_and_lease(session_factory, note_id)
            assert (status, attempts) == (NotificationStatus.PENDING, 1)
            assert 0 < due_in <= lease
        finally:
            worker.kill()  # SIGKILL: no cleanup, no commit, no rollback from the worker
            await worker.wait()
            log.close()
        assert worker.returncode == -9

        headers, body = webhook.requests[0]
        assert body["id"] == note_id
        assert headers["idempotency-key"] == f"notification-{note_id}"
        assert headers["x-correlation-id"] == "corr-0"

        # Another worker leaves the row alone while the lease lasts, then delivers it: the
        # second attempt.
        webhook.hang = False
        settings = Settings(webhook_url=webhook.url, outbox_lease_seconds=lease)
        async with httpx.AsyncClient(timeout=10) as client:
            sender = WebhookSender(client, webhook.url)
            assert await deliver_once(session_factory, sender, settings) == 0
            for _ in range(300):
                if await deliver_once(session_factory, sender, settings):
                    break
                await asyncio.sleep(0.1)
        (note,) = await notifications(session_factory)
        assert (note.status, note.attempts) == (NotificationStatus.DELIVERED, 2)
        assert [body["id"] for _, body in webhook.requests] == [note_id, note_id]
    assert "worker started (sender: WebhookSender)" in (tmp_path / "worker.log").read_text()


@pytest.mark.parametrize("status", [500, 404])
async def test_a_webhook_error_answer_is_a_failed_attempt(
    session_factory: async_sessionmaker[AsyncSession], status: int
) -> None:
    await add_notifications(session_factory, 1)
    async with Webhook().serve() as webhook, httpx.AsyncClient(timeout=10) as client:
        webhook.hang = False
        webhook.status = status
        await deliver_once(session_factory, WebhookSender(client, webhook.url), Settings())
    (note,) = await notifications(session_factory)
    assert (note.status, note.attempts) == (NotificationStatus.PENDING, 1)
    assert note.last_error is not None and str(status) in note.last_error


async def test_services_and_db_import_neither_the_web_nor_graphql() -> None:
    """The domain can run in a worker, a CLI or a test: importing every module of services/
    and db/ (the worker among them) loads no FastAPI, Starlette or Strawberry."""
    check = (
        "import sys, pkgutil, importlib, services, db; "
        "[importlib.import_module(m.name) for package in (services, db) "
        " for m in pkgutil.walk_packages(package.__path__, package.__name__ + '.') "
        " if not m.name.startswith('db.migrations')]; "
        "leaked = [m for m in ('fastapi', 'starlette', 'strawberry') if m in sys.modules]; "
        "sys.exit(', '.join(leaked) or None)"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", check, cwd=PROJECT_ROOT, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()


async def test_the_worker_refuses_production_without_a_webhook() -> None:
    """The logging sender would mark every notification delivered: lost, in production."""
    environment = {**os.environ, "ENVIRONMENT": "production", "WEBHOOK_URL": ""}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.worker",
        cwd=PROJECT_ROOT,
        env=environment,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode != 0
    assert b"WEBHOOK_URL" in stderr


async def test_webhook_payloads_name_everything_by_the_global_ids_of_the_api(
    session_factory: async_sessionmaker[AsyncSession], factory: Factory, gql: GraphQL
) -> None:
    """A consumer can take any id of a notification to `node(id:)`: the ids are the API's."""
    user, token = await factory.user()
    product = await factory.product(stock=5)
    placed = await gql(CREATE_ORDER, order_input("webhook-ids", (product, 2)), token=token)
    order_id = placed["data"]["createOrder"]["order"]["id"]
    async with Webhook().serve() as webhook, httpx.AsyncClient(timeout=10) as client:
        webhook.hang = False
        await deliver_once(session_factory, WebhookSender(client, webhook.url), Settings())
    ((_, body),) = webhook.requests
    assert body["kind"] == "order.created"
    assert body["payload"]["orderId"] == order_id
    assert body["payload"]["userId"] == to_global_id("User", user.id)
    assert body["payload"]["items"] == [
        {"productId": pid(product), "quantity": 2, "unitPrice": str(product.price)}
    ]
    # What the consumer got names the order the API knows.
    found = await gql("query($id: ID!) { node(id: $id) { id } }", {"id": order_id}, token=token)
    assert found["data"]["node"] == {"id": order_id}
