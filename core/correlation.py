"""The correlation ID of the work in progress: set per request by the edge, per delivery by the
outbox worker, read by logging and by whatever records an effect (outbox rows, errors)."""

from contextvars import ContextVar

correlation_id_var: ContextVar[str | None] = ContextVar("correlation_id", default=None)


def current_correlation_id() -> str | None:
    return correlation_id_var.get()
