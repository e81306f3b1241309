"""Prometheus metrics of the edge. Counters are bumped where the event happens; the pool gauge
is read at scrape time, so the hot path pays for nothing it does not use."""

import asyncio
import logging
import re
import time
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
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import Response

from services import outbox

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
# The outbox's backlog is the database's, the same for every process: the value of the process
# that read it last is the one to show.
OUTBOX_PENDING = Gauge(
    "outbox_pending_messages",
    "Notifications not delivered yet (due or backing off), read at scrape time.",
    multiprocess_mode="mostrecent",
)
OUTBOX_FAILED = Gauge(
    "outbox_failed_messages",
    "Notifications FAILED for good, waiting for `services.worker requeue-failed`.",
    multiprocess_mode="mostrecent",
)
OUTBOX_OLDEST_PENDING_AGE = Gauge(
    "outbox_oldest_pending_age_seconds",
    "Age of the oldest pending notification (0 when none), read at scrape time.",
    multiprocess_mode="mostrecent",
)

SUBSCRIPTIONS_OPEN = Gauge(
    "graphql_subscriptions_open",
    "Subscriptions open in this process (over WebSocket or multipart HTTP).",
    multiprocess_mode="livesum",
)
# The lowest of the processes: 0 when any of them is not listening (reconnecting).
CHANGE_FEED_LISTENING = Gauge(
    "change_feed_listening",
    "1 while the process LISTENs for committed changes (subscriptions), read at scrape time.",
    multiprocess_mode="livemin",
)
SUBSCRIPTION_EVENTS = Counter(
    "graphql_subscription_events_total", "Subscription results sent to clients."
)
SUBSCRIPTION_DROPS = Counter(
    "graphql_subscription_drops_total",
    "Subscriptions the server ended, by reason (slow consumer, token no longer valid, "
    "change feed interrupted, error).",
    ["reason"],
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


class OutboxGauges:
    """Reads the outbox backlog into its gauges when /metrics is scraped: at most once per
    `interval` and one read at a time per process, so scraping /metrics often (it needs no
    credentials) cannot turn into a stream of table scans; bounded by `timeout`, so a database
    that is down or slow costs a scrape that much at most, and then a warning and the last
    values rather than an error."""

    def __init__(self, *, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self._last_read: float | None = None
        self._reading = False

    async def refresh(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        now = time.monotonic()
        if self._reading or (self._last_read is not None and now - self._last_read < self.interval):
            return
        self._reading, self._last_read = True, now
        try:
            async with asyncio.timeout(self.timeout), session_factory() as session:
                backlog = await outbox.backlog(session)
        except Exception as error:  # the metrics of the edge must outlive the database
            logger.warning(
                "outbox backlog not read (%s): its gauges keep their last values",
                type(error).__name__,
            )
            return
        finally:
            self._reading = False
        OUTBOX_PENDING.set(backlog.pending)
        OUTBOX_FAILED.set(backlog.failed)
        OUTBOX_OLDEST_PENDING_AGE.set(backlog.oldest_pending_age_seconds)


async def _refresh_outbox_gauges(state: Any) -> None:
    session_factory = getattr(state, "session_factory", None)
    if session_factory is None:  # outside the app's lifespan
        return
    gauges = getattr(state, "outbox_gauges", None)
    if gauges is None:
        settings = state.settings
        gauges = state.outbox_gauges = OutboxGauges(
            interval=settings.outbox_metrics_interval_seconds,
            timeout=settings.readiness_timeout,
        )
    await gauges.refresh(session_factory)


async def metrics_endpoint(request: Request) -> Response:
    state = request.app.state
    await _refresh_outbox_gauges(state)
    events = getattr(state, "events", None)
    if events is not None:
        CHANGE_FEED_LISTENING.set(1 if events.listening.is_set() else 0)
    return metrics_response(
        getattr(state, "engine", None),
        multiprocess_dir=state.settings.prometheus_multiproc_dir,
    )
