"""The edge's traces (core/tracing.py configures them): a span per HTTP request continuing the
client's `traceparent` (OpenTelemetry's ASGI middleware), and inside it a span per GraphQL
operation, named after it ("query History"), with parse, validate and execute as its events.
Both carry the request's correlation ID. With tracing off the app has no middleware for it and
the endpoint's hooks return at once."""

import os
from contextlib import AbstractContextManager, nullcontext

from graphql import OperationDefinitionNode
from opentelemetry import trace
from opentelemetry.trace import Span
from starlette.types import ASGIApp, Scope

from core.correlation import current_correlation_id
from core.tracing import tracer, tracing_enabled

CORRELATION_ID = "correlation_id"
# Probes and scrapes, many a minute, would bury the traces worth reading.
UNTRACED_PATHS = "/healthz,/readyz,/metrics"


def traced(app: ASGIApp) -> ASGIApp:
    """`app` inside OpenTelemetry's ASGI middleware (a server span per request, the incoming
    `traceparent` continued). Placed inside the correlation-ID layer, so the span can carry the
    ID. `OTEL_PYTHON_ASGI_EXCLUDED_URLS` replaces the paths left untraced."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware  # noqa: PLC0415
    from opentelemetry.util.http import get_excluded_urls, parse_excluded_urls  # noqa: PLC0415

    chosen = (
        "OTEL_PYTHON_ASGI_EXCLUDED_URLS" in os.environ or "OTEL_PYTHON_EXCLUDED_URLS" in os.environ
    )
    excluded = get_excluded_urls("ASGI") if chosen else parse_excluded_urls(UNTRACED_PATHS)
    middleware: ASGIApp = OpenTelemetryMiddleware(
        app,
        excluded_urls=excluded,
        server_request_hook=_note_correlation_id,
        # A span per ASGI message sent or received is noise, and costs.
        exclude_spans=["receive", "send"],
    )
    return middleware


def _note_correlation_id(span: Span, _scope: Scope) -> None:
    if span.is_recording():
        span.set_attribute(CORRELATION_ID, current_correlation_id() or "")


_UNTRACED: AbstractContextManager[object] = nullcontext()


def operation_span() -> AbstractContextManager[object]:
    """The span of one GraphQL operation, current while the endpoint handles the request;
    nothing when tracing is off."""
    if not tracing_enabled():
        return _UNTRACED
    return tracer().start_as_current_span(
        "GraphQL operation", attributes={CORRELATION_ID: current_correlation_id() or ""}
    )


def name_operation(operation: OperationDefinitionNode | None) -> None:
    """The current operation span named after the operation the request runs, as the
    semantic conventions say (`query History`, `mutation` when anonymous); parse done."""
    if not tracing_enabled():
        return
    span = trace.get_current_span()
    if operation is not None:
        kind = operation.operation.value
        name = operation.name.value if operation.name else None
        span.update_name(f"{kind} {name}" if name else kind)
        span.set_attribute("graphql.operation.type", kind)
        if name:
            span.set_attribute("graphql.operation.name", name)
    span.add_event("graphql.parse")


def operation_event(name: str) -> None:
    """A step of the current operation done: `graphql.validate`, `graphql.execute`."""
    if tracing_enabled():
        trace.get_current_span().add_event(name)
