"""The process's Redis client (rate limits, persisted queries, readiness), when one is
configured, with timeouts short enough that a stalled Redis cannot stall requests."""

import logging
import time

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from core.settings import Settings

logger = logging.getLogger(__name__)


def create_redis(settings: Settings) -> Redis | None:
    if not settings.redis_url:
        return None
    return Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        # One quick retry covers a connection dropped by a Redis restart; more would only
        # multiply the time a request waits on a Redis that is down.
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )


class RedisCircuit:
    """Remembers that Redis just failed, so callers skip it for `interval` seconds instead of
    each paying a connection attempt, and the failure is logged once per interval."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._open_until = 0.0

    @property
    def is_open(self) -> bool:
        return time.monotonic() < self._open_until

    def record_failure(self, component: str, error: BaseException) -> None:
        if not self.is_open:
            logger.warning(
                "redis unavailable for %s (%s: %s); skipping it for %.1fs",
                component,
                type(error).__name__,
                error,
                self.interval,
                extra={"component": component},
            )
        self._open_until = time.monotonic() + self.interval
