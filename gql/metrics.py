"""Prometheus metrics of the edge. Counters are bumped where the event happens; the pool gauge
is read at scrape time, so the hot path pays for nothing it does not use."""

import logging
import re
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response
from strawberry.types import ExecutionContext

REQUEST_LATENCY = Histogram(
    "graphql_request_duration_seconds",
    "Time to parse, validate and execute a GraphQL operation.",
    ["operation_name", "operation_type"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
ERRORS = Counter("graphql_errors_total", "GraphQL errors sent, by code.", ["code"])
RATE_LIMITED = Counter(
    "rate_limit_refusals_total", "Requests refused by a rate limit, by limit.", ["limit"]
)
RATE_LIMIT_UNCHECKED = Counter(
    "rate_limit_unchecked_total", "Requests let through unchecked while Redis was unavailable."
)
REDIS_FAILURES = Counter(
    "redis_failures_total", "Failed Redis calls, by what needed Redis.", ["component"]
)
DB_POOL_CHECKED_OUT = Gauge(
    "db_pool_checked_out_connections",
    "Database connections in use, read at scrape time.",
    multiprocess_mode="livesum",
)

logger = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class OperationNames:
    """Operation names come from clients: only the first `limit` distinct well-formed ones
    become label values, the rest are "other", so no client can blow up the series count."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._known: set[str] = set()

    def label(self, name: str | None) -> str:
        if not name:
            return "anonymous"
        if name in self._known:
            return name
        if len(self._known) < self.limit and _SAFE_NAME.match(name):
            self._known.add(name)
            return name
        return "other"


OPERATION_NAMES = OperationNames(200)


_latency_series: dict[tuple[str, str], Any] = {}


def observe_operation(execution_context: ExecutionContext, seconds: float) -> None:
    try:
        operation_type = execution_context.operation_type.value
    except RuntimeError:  # the document did not parse or names no such operation
        operation_type = "unknown"
    observe_latency(execution_context.operation_name, operation_type, seconds)


def observe_latency(operation_name: str | None, operation_type: str, seconds: float) -> None:
    """Record an operation's latency under its name and type (children cached: `labels()`
    takes a lock and builds a key on every call)."""
    key = (OPERATION_NAMES.label(operation_name), operation_type)
    series = _latency_series.get(key)
    if series is None:
        series = _latency_series[key] = REQUEST_LATENCY.labels(*key)
    series.observe(seconds)


def metrics_response(engine: AsyncEngine | None, *, multiprocess_dir: object = None) -> Response:
    if engine is not None:
        checkedout = getattr(engine.pool, "checkedout", None)
        if checkedout is not None:
            DB_POOL_CHECKED_OUT.set(checkedout())
    if multiprocess_dir and _multiprocess_ready(Path(str(multiprocess_dir))):
        registry = CollectorRegistry()
        # The folder of the settings, not os.environ's: they differ when it came from .env.
        multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
            registry, path=str(multiprocess_dir)
        )
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


_warned: set[Path] = set()


def _multiprocess_ready(folder: Path) -> bool:
    """Whether this process writes its values to `folder` for the multi-process collector.
    prometheus-client picks its mode from os.environ when it is imported, so a setting read
    from .env, or a process not started through gunicorn.conf.py (which exports it), keeps
    its values in memory; a missing folder would make the collector fail. Either way this
    process's own values are served, and that is said once."""
    multiprocess_mode = values.ValueClass is not values.MutexValue
    if multiprocess_mode and folder.is_dir():
        return True
    if folder not in _warned:
        _warned.add(folder)
        reason = (
            "is not a folder"
            if not folder.is_dir()
            else "was not in the environment when the process started"
        )
        logger.warning(
            "PROMETHEUS_MULTIPROC_DIR %s %s: /metrics shows this process's values only",
            folder,
            reason,
        )
    return False


async def metrics_endpoint(request: Request) -> Response:
    state = request.app.state
    return metrics_response(
        getattr(state, "engine", None),
        multiprocess_dir=state.settings.prometheus_multiproc_dir,
    )
