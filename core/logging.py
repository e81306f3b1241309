"""JSON log lines, each carrying the correlation ID of the work that wrote it; one
`configure_logging` for the server, the app and workers."""

import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from core.correlation import correlation_id_var

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "correlation_id",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}


class CorrelationIdFilter(logging.Filter):
    """Stamps the record when it is made, in the caller's context: a later formatter (or
    another thread) would see another context."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = correlation_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "correlation_id": getattr(record, "correlation_id", None),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES:
                payload[key] = value
        if record.exc_info:
            payload["exception"] = "".join(traceback.format_exception(*record.exc_info))
        return orjson.dumps(payload, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(correlation_id)s] %(message)s")


def configure_logging(
    level: str = "INFO",
    *,
    json: bool = True,
    stream: IO[str] | None = None,
    force: bool = True,
) -> None:
    """Route every logger (uvicorn's too, when it is run with `log_config=None`) through one
    handler on the root logger. With `force=False`, a root logger that the server already
    configured (gunicorn's `logconfig_dict`) keeps its handlers; they only gain the
    correlation ID."""
    root = logging.getLogger()
    if not force and root.handlers:
        for existing in root.handlers:
            if not any(isinstance(f, CorrelationIdFilter) for f in existing.filters):
                existing.addFilter(CorrelationIdFilter())
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(CorrelationIdFilter())
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    logging.getLogger("pgserver").setLevel(logging.WARNING)
