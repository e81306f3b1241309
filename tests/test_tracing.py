"""Issue 15: OpenTelemetry traces. With the SDK's in-memory exporter: a request's span continues
the client's `traceparent`, the GraphQL operation's span (named after it, parse / validate /
execute as events) sits inside it, SQL and Redis calls inside that, each with the correlation
ID where it applies; the outbox carries the trace to the worker's delivery and on to the
webhook. Off (no OTEL_* variable) nothing is traced or stored. And under plain gunicorn, with
the environment alone, each worker exports its spans (console exporter)."""

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import select

from core.settings import Settings
from core.tracing import start_tracing, stop_tracing, tracing_enabled, tracing_requested
from db.models import Notification
from gql.app import create_app
from services.outbox import WebhookSender
from services.worker import deliver_once
from tests.deployment import gunicorn_instances
from tests.edge_support import REDIS_URL, delete_prefix, edge_settings
from tests.factories import Factory
from tests.test_checkout import CREATE_ORDER, order_input

EXPORTER = InMemorySpanExporter()
PROCESSOR = SimpleSpanProcessor(EXPORTER)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for one test, into the in-memory exporter; off again after it."""
    EXPORTER.clear()
    start_tracing("booking-gateway", span_processors=[PROCESSOR])
    yield EXPORTER
    stop_tracing()
    EXPORTER.clear()


def _hex(number: int, width: int) -> str:
    return format(number, f"0{width}x")


def _children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def _descendants(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    found = _children(spans, parent)
    return found + [d for child in found for d in _descendants(spans, child)]


async def _traced_order(
    spans: InMemorySpanExporter, database_url: str, factory: Factory
) -> list[ReadableSpan]:
    """A createOrder sent with a client's `traceparent` (and a probe): the spans of the
    client's trace."""
    _, token = await factory.user()
    product = await factory.product(stock=5)
    prefix = f"test-tracing-{uuid.uuid4().hex[:12]}"
    settings = edge_settings(redis_url=REDIS_URL, redis_key_prefix=prefix)
    app = create_app(settings, database_url=database_url)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                spans.clear()  # the fixtures' and the startup's own
                response = await client.post(
                    "/graphql",
                    json={
                        "query": CREATE_ORDER,
                        "operationName": "Create",
                        "variables": order_input("k1", (product, 2)),
                    },
                    headers={
                        "Authorization": f"Bearer {token}",
                        "traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01",
                        "X-Correlation-ID": "corr-traced-1",
                    },
                )
                await client.get("/healthz")  # probes are not traced
    finally:
        await delete_prefix(prefix)
    assert response.json()["data"]["createOrder"]["__typename"] == "CreateOrderSuccess"
    everything = spans.get_finished_spans()
    assert not [s for s in everything if "healthz" in s.name]
    # The request's trace; the others are the process's own work (the token-usage flush at
    # shutdown, the change feed's LISTEN, the test's Redis cleanup).
    return [s for s in everything if _hex(s.context.trace_id, 32) == TRACE_ID]


def _operation(finished: list[ReadableSpan]) -> ReadableSpan:
    [request] = [s for s in finished if s.kind is SpanKind.SERVER]
    [operation] = _children(finished, request)
    return operation


async def test_a_request_span_continues_the_client_trace_around_the_operation_and_its_calls(
    spans: InMemorySpanExporter, database_url: str, factory: Factory
) -> None:
    finished = await _traced_order(spans, database_url, factory)
    [request] = [s for s in finished if s.kind is SpanKind.SERVER]
    assert request.name == "POST /graphql"
    assert request.parent is not None and _hex(request.parent.span_id, 16) == CLIENT_SPAN
    assert request.attributes is not None
    assert request.attributes["correlation_id"] == "corr-traced-1"
    assert request.resource.attributes["service.name"] == "booking-gateway"

    [operation] = _children(finished, request)
    assert operation.name == "mutation Create"
    assert operation.attributes == {
        "correlation_id": "corr-traced-1",
        "graphql.operation.type": "mutation",
        "graphql.operation.name": "Create",
    }
    assert [e.name for e in operation.events] == [
        "graphql.parse",
        "graphql.validate",
        "graphql.execute",
    ]
    inside = _descendants(finished, operation)
    sql = [s for s in inside if (s.attributes or {}).get("db.system") == "postgresql"]
    statements = " ".join(str((s.attributes or {}).get("db.statement", "")) for s in sql)
    # The order's one statement (services.checkout.create_order_in_one_statement).
    assert "api_tokens" in statements and "place_order_from_stock" in statements, statements
    assert any((s.attributes or {}).get("db.system") == "redis" for s in inside), [
        s.name for s in inside
    ]
    assert len(inside) == len(finished) - 2  # nothing outside the operation but the request


async def test_the_outbox_carries_the_trace_to_the_delivery_and_the_webhook(
    spans: InMemorySpanExporter, database_url: str, factory: Factory
) -> None:
    operation = _operation(await _traced_order(spans, database_url, factory))
    # The outbox row keeps the operation's context; the worker's delivery continues it.
    async with factory.session_factory() as session:
        stored = await session.scalar(select(Notification.trace_context))
    assert stored is not None
    assert stored["traceparent"] == f"00-{TRACE_ID}-{_hex(operation.context.span_id, 16)}-01"
    webhook_headers: list[httpx.Headers] = []

    def receive(request: httpx.Request) -> httpx.Response:
        webhook_headers.append(request.headers)
        return httpx.Response(204)

    spans.clear()
    async with httpx.AsyncClient(transport=httpx.MockTransport(receive)) as webhook:
        await deliver_once(
            factory.session_factory, WebhookSender(webhook, "http://hooks.test/"), Settings()
        )
    [delivery] = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    assert delivery.name == "deliver order.created"
    assert _hex(delivery.context.trace_id, 32) == TRACE_ID
    assert delivery.parent is not None
    assert delivery.parent.span_id == operation.context.span_id
    assert delivery.attributes is not None
    assert delivery.attributes["correlation_id"] == "corr-traced-1"
    [headers] = webhook_headers
    assert headers["traceparent"] == f"00-{TRACE_ID}-{_hex(delivery.context.span_id, 16)}-01"
    assert headers["x-correlation-id"] == "corr-traced-1"


async def test_without_otel_variables_nothing_is_traced_or_stored(
    database_url: str, factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    assert not tracing_requested() and not tracing_enabled()
    EXPORTER.clear()
    _, token = await factory.user()
    product = await factory.product(stock=5)
    app = create_app(edge_settings(), database_url=database_url)
    async with app.router.lifespan_context(app):
        assert not tracing_enabled()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post(
                "/graphql",
                json={
                    "query": CREATE_ORDER,
                    "variables": order_input("k2", (product, 1)),
                },
                headers={
                    "Authorization": f"Bearer {token}",
                    "traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01",
                },
            )
    assert response.json()["data"]["createOrder"]["__typename"] == "CreateOrderSuccess"
    # FastAPI's own telemetry traces through the global provider a test above set (for good:
    # the API allows one per process); a process without OTEL_* has none, so it stays off too.
    ours = [s for s in EXPORTER.get_finished_spans() if s.instrumentation_scope.name != "fastapi"]
    assert ours == [], [s.name for s in ours]
    async with factory.session_factory() as session:
        assert await session.scalar(select(Notification.trace_context)) is None
        stored = await session.scalar(
            select(Notification.trace_context.is_(None)).where(Notification.id.is_not(None))
        )
    assert stored is True  # SQL NULL, not JSON null


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "booking"}, False),  # names the service, asks for nothing
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_the_environment_turns_tracing_on(environ: dict[str, str], on: bool) -> None:
    assert tracing_requested(environ) is on


async def test_plain_gunicorn_workers_export_their_spans(database_url: str, tmp_path: Path) -> None:
    """`gunicorn -c gunicorn.conf.py gql.app:app` with the SDK's variables alone: each worker
    sets tracing up after the fork and flushes its spans when it stops."""
    env = {
        "DATABASE_URL": database_url,
        "WEB_CONCURRENCY": "2",
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": f"test-tracing-{uuid.uuid4().hex[:12]}",
        "ACCESS_LOG": "false",
        "OTEL_SERVICE_NAME": "booking-under-gunicorn",
        "OTEL_TRACES_EXPORTER": "console",
    }
    shelf = {"query": "query Shelf { products(first: 2) { edges { node { id } } } }"}
    async with (
        gunicorn_instances(1, env=env, log_dir=tmp_path) as [instance],
        httpx.AsyncClient(base_url=instance.url) as client,
    ):
        for _ in range(4):
            response = await client.post("/graphql", json=shelf)
            assert response.status_code == 200, response.text
    await delete_prefix(env["REDIS_KEY_PREFIX"])
    exported = _console_spans(instance.log_text())
    names = {span["name"] for span in exported}
    assert {"POST /graphql", "query Shelf"} <= names, names
    assert {span["resource"]["attributes"]["service.name"] for span in exported} == {
        "booking-under-gunicorn"
    }
    assert any(span["attributes"].get("db.system") == "postgresql" for span in exported)


def _console_spans(output: str) -> list[dict[str, Any]]:
    """The JSON objects the console exporter printed, among the log lines."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    position = 0
    while (start := output.find("{\n", position)) != -1:
        try:
            value, position = decoder.raw_decode(output, start)
        except json.JSONDecodeError:
            position = start + 1
            continue
        if isinstance(value, dict) and "context" in value and "name" in value:
            found.append(value)
    return found
