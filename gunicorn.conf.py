"""Production serving: `gunicorn -c gunicorn.conf.py gql.app:app` (DATABASE_URL required).

Every value comes from `core.settings` (so from the environment); see the README's settings
table. Each worker imports the app after the fork (no preload), so each builds its own engine
and connection pool in the app's lifespan and disposes of it on shutdown.
"""

import multiprocessing
import os
from typing import Any

from core.settings import get_settings

_settings = get_settings()


def _default_workers() -> int:
    # The usual 2 x cores + 1, capped: the app is async, so more processes than that only add
    # connections and memory.
    return min(2 * multiprocessing.cpu_count() + 1, 8)


wsgi_app = "gql.app:app"
worker_class = "gql.transport.gunicorn_worker.Worker"
workers = _settings.web_concurrency or _default_workers()
bind = [_settings.bind or f"{_settings.host}:{_settings.port}"]
preload_app = False
# gunicorn's runtime control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl),
# which two instances on one host would fight over; off unless an operator wants it.
control_socket_disable = True
# X-Forwarded-For/-Proto are believed only from TRUSTED_PROXIES, by the app itself: the worker
# turns uvicorn's proxy headers off (gql/transport/gunicorn_worker.py), and this (default:
# loopback, or the FORWARDED_ALLOW_IPS variable) trusts no one should another worker class be
# swapped in.
forwarded_allow_ips = ""

timeout = _settings.worker_timeout
graceful_timeout = _settings.graceful_timeout
keepalive = _settings.keepalive
# Recycle workers now and then (bounding any slow leak); the jitter keeps them from all
# restarting at the same moment.
max_requests = _settings.max_requests
max_requests_jitter = _settings.max_requests_jitter if _settings.max_requests else 0

# Logs: access lines (JSON objects, written by gql.transport.gunicorn_worker in batches) on
# stdout; gunicorn's own lines and the app's (which propagate to the root logger) on stderr in
# core.logging's format, correlation ID included.
loglevel = _settings.log_level.lower()
accesslog = "-" if _settings.access_log else None
errorlog = "-"
logconfig_dict: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        # Access lines are already JSON objects: written as they are.
        "access": {"format": "%(message)s"},
        "error": {
            "()": "core.logging.JsonFormatter"
            if _settings.log_json
            else "core.logging.TextFormatter"
        },
    },
    "filters": {"correlation_id": {"()": "core.logging.CorrelationIdFilter"}},
    "handlers": {
        "access": {
            "class": "logging.StreamHandler",
            "formatter": "access",
            "stream": "ext://sys.stdout",
        },
        "error": {
            "class": "logging.StreamHandler",
            "formatter": "error",
            "filters": ["correlation_id"],
            "stream": "ext://sys.stderr",
        },
    },
    "root": {"level": loglevel.upper(), "handlers": ["error"]},
    "loggers": {
        "gunicorn.access": {
            "level": "INFO" if _settings.access_log else "WARNING",
            "handlers": ["access"],
            "propagate": False,
        },
        "gunicorn.error": {"level": loglevel.upper(), "handlers": ["error"], "propagate": False},
    },
}


# Metrics of several workers: prometheus-client reads this variable itself, in each worker, so
# a value that came from a .env file is exported for it before the workers are forked.
if _settings.prometheus_multiproc_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_settings.prometheus_multiproc_dir)


def on_starting(server: Any) -> None:
    """Refuse configurations that would misbehave in production, before any worker starts."""
    problems = _settings.production_problems()
    if problems:
        raise SystemExit(
            "gunicorn.conf.py: ENVIRONMENT=production refuses to start:\n"
            + "\n".join(f"- {problem}" for problem in problems)
        )
    if not _settings.database_url:
        raise SystemExit(
            "gunicorn.conf.py: DATABASE_URL is not set. The embedded PostgreSQL is for "
            "`make run`; under gunicorn every worker would start its own."
        )
    if server.cfg.workers > 1 and not _settings.redis_url:
        raise SystemExit(
            f"gunicorn.conf.py: {server.cfg.workers} workers but REDIS_URL is not set. Rate "
            "limits kept in memory would be per worker (each client would get N times its "
            "limit); set REDIS_URL, or WEB_CONCURRENCY=1."
        )
    metrics_dir = _settings.prometheus_multiproc_dir
    if metrics_dir:
        # A previous run's files would add their counts to this one's.
        metrics_dir.mkdir(parents=True, exist_ok=True)
        for stale in metrics_dir.glob("*.db"):
            stale.unlink()
    elif server.cfg.workers > 1:
        server.log.warning(
            "%d workers without PROMETHEUS_MULTIPROC_DIR: each scrape of /metrics shows the "
            "numbers of whichever worker answered",
            server.cfg.workers,
        )


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's live gauges leave the multiprocess sums."""
    if _settings.prometheus_multiproc_dir:
        from prometheus_client import multiprocess  # noqa: PLC0415

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
