"""Production serving: `gunicorn -c gunicorn.conf.py gql.app:app` (DATABASE_URL required).

Every value comes from `core.settings` (so from the environment); see the README's settings
table. Each worker imports the app after the fork (no preload), so each builds its own engine
and connection pool in the app's lifespan and disposes of it on shutdown.
"""

import multiprocessing
from typing import Any

from core.settings import get_settings

_settings = get_settings()


def _default_workers() -> int:
    # The usual 2 x cores + 1, capped: the app is async, so more processes than that only add
    # connections and memory.
    return min(2 * multiprocessing.cpu_count() + 1, 8)


wsgi_app = "gql.app:app"
worker_class = "gql.worker.Worker"
workers = _settings.web_concurrency or _default_workers()
bind = [_settings.bind or f"{_settings.host}:{_settings.port}"]
preload_app = False
# gunicorn's runtime control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl),
# which two instances on one host would fight over; off unless an operator wants it.
control_socket_disable = True

timeout = _settings.worker_timeout
graceful_timeout = _settings.graceful_timeout
keepalive = _settings.keepalive
# Recycle workers now and then (bounding any slow leak); the jitter keeps them from all
# restarting at the same moment.
max_requests = _settings.max_requests
max_requests_jitter = _settings.max_requests_jitter if _settings.max_requests else 0

# Logs: JSON lines on stdout (access) and stderr (errors), for the log shipper.
loglevel = _settings.log_level.lower()
logger_class = "gql.worker.JsonAccessLogger"
accesslog = "-" if _settings.access_log else None
errorlog = "-"
access_log_format = (
    '{"time": "%(t)s", "type": "access", "remote_addr": "%(h)s", "method": "%(m)s", '
    '"path": "%(U)s", "query": "%(q)s", "status": %(s)s, "bytes": %(B)s, '
    '"duration_ms": %(M)s, "user_agent": "%(a)s", '
    '"correlation_id": "%({x-correlation-id}o)s"}'
)
logconfig_dict: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        # Access lines are already JSON objects: written as they are.
        "access": {"format": "%(message)s"},
        "error": {"()": "gql.worker.JsonLineFormatter"},
    },
    "handlers": {
        "access": {
            "class": "logging.StreamHandler",
            "formatter": "access",
            "stream": "ext://sys.stdout",
        },
        "error": {
            "class": "logging.StreamHandler",
            "formatter": "error",
            "stream": "ext://sys.stderr",
        },
    },
    # The app's own loggers propagate here: JSON lines on stderr too.
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


def on_starting(server: Any) -> None:
    """Refuse configurations that would misbehave in production, before any worker starts."""
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
