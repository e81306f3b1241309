"""Rate limits of the GraphQL route: one per caller per request, stricter ones per root field
(the mutations), counted with the `limits` library's async API in Redis, so that every process
shares one count; in memory only when no Redis is configured (a single local process)."""

import logging
import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio import Redis

from core.redis import RedisCircuit
from core.settings import Settings
from gql.metrics import RATE_LIMIT_UNCHECKED, RATE_LIMITED, REDIS_FAILURES

logger = logging.getLogger(__name__)

Network = IPv4Network | IPv6Network


@dataclass(frozen=True, slots=True)
class Refusal:
    limit: str  # "request", or the root field whose own limit was hit
    retry_after: int  # whole seconds, at least 1


class RateLimitUnavailable(Exception):
    """Redis is down and the limits are configured to fail closed."""


class RateLimiter:
    """A moving window per (limit, caller): unlike a fixed window it never lets 2·N through
    across a window boundary, at the price of one Redis list entry per hit."""

    def __init__(self, settings: Settings, redis: Redis | None, circuit: RedisCircuit) -> None:
        self.enabled = settings.rate_limit_enabled
        self.fail_open = settings.rate_limit_fail_open
        self._circuit = circuit
        self._shared = redis is not None
        storage: Storage
        if redis is not None and settings.redis_url:
            storage = RedisStorage(
                "async+" + settings.redis_url,
                implementation="redispy",  # coredis, the default, does not build here
                key_prefix=f"{settings.redis_key_prefix}:ratelimit",
                connection_pool=redis.connection_pool,  # type: ignore[arg-type]
                wrap_exceptions=True,
            )
        else:
            storage = MemoryStorage()
        self._limiter = MovingWindowRateLimiter(storage)
        self._request_limits = parse_many(settings.rate_limit_default)
        self._field_limits = {
            name: parse_many(limit) for name, limit in settings.rate_limit_fields.items()
        }

    def limited_fields(self) -> Iterable[str]:
        return self._field_limits.keys()

    async def check(self, caller: str, root_fields: Counter[str] | None = None) -> Refusal | None:
        """Count one request of `caller` (and each root field with its own limit, once per
        occurrence) and say which limit, if any, refuses it."""
        if not self.enabled:
            return None
        checks: list[tuple[RateLimitItem, str, int]] = [
            (item, "request", 1) for item in self._request_limits
        ]
        for field, count in (root_fields or {}).items():
            checks.extend((item, field, count) for item in self._field_limits.get(field, ()))
        if self._shared and self._circuit.is_open:
            self._let_through_unchecked()
            return None
        try:
            for item, scope, cost in checks:
                if not await self._limiter.hit(item, scope, caller, cost=cost):
                    RATE_LIMITED.labels(scope).inc()
                    stats = await self._limiter.get_window_stats(item, scope, caller)
                    retry_after = max(1, math.ceil(stats.reset_time - time.time()))
                    return Refusal(limit=scope, retry_after=retry_after)
        except StorageError as error:
            REDIS_FAILURES.labels("rate_limit").inc()
            self._circuit.record_failure("rate limits", error.storage_error)
            self._let_through_unchecked()
            return None
        return None

    def _let_through_unchecked(self) -> None:
        if not self.fail_open:
            raise RateLimitUnavailable
        RATE_LIMIT_UNCHECKED.inc()


def client_ip(peer: str | None, forwarded_for: list[str], trusted: list[Network]) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy, in which case the
    rightmost X-Forwarded-For hop that is not itself a trusted proxy (anything to its left
    could have been written by the client)."""
    if peer is None:
        return "unknown"
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _is_trusted(address: str, trusted: list[Network]) -> bool:
    try:
        parsed: IPv4Address | IPv6Address = ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in trusted)
