"""OpenTelemetry traces, configured by the SDK's standard environment variables (`OTEL_*`), and
off, at no cost, when none of them asks for traces.

On when `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`; not `none`) or an OTLP
endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the
exporter is then `otlp`), unless `OTEL_SDK_DISABLED=true`. Everything else is the SDK's and the
exporter's own reading of the environment: `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_TRACES_SAMPLER`(`_ARG`), `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_*`, `OTEL_PROPAGATORS`. `otlp`
is OTLP over HTTP (`opentelemetry-exporter-otlp-proto-http`, installed); gRPC needs
`OTEL_EXPORTER_OTLP_PROTOCOL=grpc` and the `opentelemetry-exporter-otlp-proto-grpc` package.

`start_tracing` runs in the process that serves (the app's lifespan: under gunicorn, in each
worker after the fork, since the SDK's export thread and the exporter's connections would not
survive one), and instruments asyncpg (SQL statements, `db.system` postgresql) and redis-py
(rate limits, persisted queries). While tracing is off nothing is instrumented, and the helpers
below return at their first line."""

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.trace import Span, SpanKind

_ON = {"enabled": False}
_state: dict[str, Any] = {}


def tracing_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces (see the module's docstring)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER")
    if exporters is not None:
        return exporters.strip().lower() not in ("", "none")
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def tracing_enabled() -> bool:
    return _ON["enabled"]


def start_tracing(default_service_name: str, *, span_processors: Sequence[Any] = ()) -> bool:
    """Set up the SDK once per process when the environment asks for it (or `span_processors`
    are given: the tests' in-memory exporter); True when tracing is on."""
    if _ON["enabled"]:
        return True
    if not span_processors and not tracing_requested():
        return False
    # Imported only now: a process that does not trace never loads the SDK.
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor  # noqa: PLC0415
    from opentelemetry.instrumentation.redis import RedisInstrumentor  # noqa: PLC0415
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: default_service_name}))
    provider = _state.get("provider")
    if provider is None:
        provider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER
        for exporter in _exporters() if tracing_requested() else []:
            provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_*
        # The API's global provider can be set once per process.
        trace.set_tracer_provider(provider)
        _state["provider"] = provider
    added = _state.setdefault("processors", [])
    for processor in span_processors:
        if processor not in added:  # a test's exporter, given again by the next test
            provider.add_span_processor(processor)
            added.append(processor)
    AsyncPGInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    RedisInstrumentor().instrument(tracer_provider=provider)
    _state["tracer"] = provider.get_tracer("booking")
    _ON["enabled"] = True
    return True


def stop_tracing() -> None:
    """Send what is buffered and stop instrumenting (the process is ending, or a test is)."""
    if not _ON["enabled"]:
        return
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor  # noqa: PLC0415
    from opentelemetry.instrumentation.redis import RedisInstrumentor  # noqa: PLC0415

    _ON["enabled"] = False
    AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
    RedisInstrumentor().uninstrument()
    _state["provider"].force_flush()


def _exporters() -> list[Any]:
    """The span exporters OTEL_TRACES_EXPORTER names, from their packages' entry points."""
    from importlib.metadata import entry_points  # noqa: PLC0415

    names = os.environ.get("OTEL_TRACES_EXPORTER") or "otlp"
    found = []
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    otlp = "otlp_proto_grpc" if protocol.strip() == "grpc" else "otlp_proto_http"
    for named in (part.strip() for part in names.split(",")):
        name = otlp if named == "otlp" else named
        matches = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not matches:
            raise RuntimeError(
                f"OTEL_TRACES_EXPORTER: no span exporter {name!r} is installed "
                "(otlp over HTTP and console are)"
            )
        found.append(next(iter(matches)).load()())
    return found


def tracer() -> trace.Tracer:
    tracer: trace.Tracer = _state["tracer"]
    return tracer


def trace_context() -> dict[str, str] | None:
    """The current span's W3C context (`traceparent`, `tracestate`), to store with work done
    later elsewhere (the outbox); None while tracing is off or no span is current."""
    if not _ON["enabled"]:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


def inject_trace_context(headers: dict[str, str]) -> None:
    """The current span's context into outgoing HTTP headers (the outbox's webhook)."""
    if _ON["enabled"]:
        propagate.inject(headers)


@contextmanager
def continued_span(
    name: str, carrier: Mapping[str, str] | None, attributes: Mapping[str, Any] | None = None
) -> Iterator[Span | None]:
    """A consumer span continuing the trace `carrier` was taken from (`trace_context`), current
    while the block runs; nothing while tracing is off."""
    if not _ON["enabled"]:
        yield None
        return
    parent = propagate.extract(carrier) if carrier else context.get_current()
    with tracer().start_as_current_span(
        name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span
