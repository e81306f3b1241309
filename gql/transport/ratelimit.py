"""Rate limits of the GraphQL route: one per caller per request, stricter ones per root field
(the mutations), counted with the `limits` library's async API in Redis, so that every process
shares one count; in memory only when no Redis is configured (a single local process)."""

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

from graphql import OperationDefinitionNode
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio import Redis

from core.redis import RedisCircuit
from core.settings import Settings
from gql.engine.documents import Document
from gql.engine.internals import moving_window_acquire
from gql.errors import RATE_LIMITED as RATE_LIMITED_CODE
from gql.errors import SERVICE_UNAVAILABLE
from gql.transport.allowance import LocalAllowances
from gql.transport.metrics import RATE_LIMIT_UNCHECKED, RATE_LIMITED, REDIS_FAILURES
from gql.transport.refusals import Refused
from services.auth import Actor

logger = logging.getLogger(__name__)

Network = IPv4Network | IPv6Network


@dataclass(frozen=True, slots=True)
class Refusal:
    limit: str  # "request", or the root field whose own limit was hit
    retry_after: int  # whole seconds, at least 1


class RateLimitUnavailable(Exception):
    """Redis is down and the limits are configured to fail closed."""


class BatchedRedisStorage(RedisStorage):
    """`limits`' Redis storage, sending the moving-window hits of concurrent requests together:
    the hits made in one turn of the event loop go as one pipeline of the library's own Lua
    script, instead of a round trip each. redis-py's client costs about 100 µs of CPU per
    command (pool, timeouts, retries, instrumentation), a tenth of an order history; in a
    pipeline most of it is paid once per batch. Each hit is still its own atomic script, with
    its own timestamp: the counts are exactly the unbatched ones."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batch: list[tuple[str, list[Any], asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        loop = asyncio.get_running_loop()
        if not self._batch:
            task = loop.create_task(self._send_batch())
            self._sending.add(task)  # a task nobody references may be collected mid-flight
            task.add_done_callback(self._sending.discard)
        future: asyncio.Future[Any] = loop.create_future()
        arguments = [time.time(), limit, expiry, amount]
        _, prefixed_key, _ = moving_window_acquire(self)
        self._batch.append((prefixed_key(key), arguments, future))
        return bool(await future)

    async def _send_batch(self) -> None:
        await asyncio.sleep(0)  # one more turn: requests ready in this one join the batch
        batch, self._batch = self._batch, []
        script, _, client = moving_window_acquire(self)
        try:
            if len(batch) == 1:  # alone: a pipeline would cost more than the plain call
                key, arguments, _ = batch[0]
                results = [await script([key], arguments)]
            else:
                pipeline = client.pipeline(transaction=False)
                for key, arguments, _ in batch:
                    await script([key], arguments, client=pipeline)
                results = await pipeline.execute()
        except BaseException as error:  # each waiting request gets it, wrapped by `limits`
            for *_, future in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        for (*_, future), result in zip(batch, results, strict=True):
            if not future.done():  # its request may have been cancelled meanwhile
                future.set_result(result)


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
            storage = BatchedRedisStorage(
                "async+" + settings.redis_url,
                implementation="redispy",  # coredis, the default, does not build here
                key_prefix=f"{settings.redis_key_prefix}:ratelimit",
                connection_pool=redis.connection_pool,
                wrap_exceptions=True,
            )
        else:
            storage = MemoryStorage()
        self._limiter = MovingWindowRateLimiter(storage)
        # Shared counts only: in memory a hit costs less than an allowance would save.
        share = settings.rate_limit_local_share if redis is not None else 0.0
        self._allowances = LocalAllowances(self._hit, share) if share > 0 else None
        self._request_limits = parse_many(settings.rate_limit_default)
        self._field_limits = {
            name: parse_many(limit) for name, limit in settings.rate_limit_fields.items()
        }
        self._field_names = frozenset(self._field_limits)

    def limited_fields(self) -> Iterable[str]:
        return self._field_limits.keys()

    async def check_operation(
        self,
        caller: str,
        query: str,
        document: Document,
        operation: OperationDefinitionNode | None,
    ) -> None:
        """Count one operation of `caller` (see `caller_key`) against its limits and each
        limited root field of the operation; Refused (429, or 503 when the count cannot be
        asked and limits fail closed) when one is reached. HTTP and WebSocket alike."""
        if not self.enabled:
            return
        fields: Counter[str] = Counter()
        # Cheap filter first: most operations name no field with a limit of its own.
        if operation is not None and any(name in query for name in self._field_names):
            fields = document.root_fields(operation)
        try:
            refusal = await self.check(caller, fields)
        except RateLimitUnavailable:
            raise Refused(
                503,
                SERVICE_UNAVAILABLE,
                "Rate limits cannot be checked; retry later",
                {"Retry-After": "1"},
            ) from None
        if refusal is not None:
            what = "requests" if refusal.limit == "request" else f"`{refusal.limit}`"
            raise Refused(
                429,
                RATE_LIMITED_CODE,
                f"Too many {what}; retry in {refusal.retry_after}s",
                {"Retry-After": str(refusal.retry_after)},
            )

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
                if self._allowances is not None:
                    allowed = await self._allowances.take(item, scope, caller, cost)
                else:
                    allowed = await self._hit(item, scope, caller, cost)
                if not allowed:
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

    async def _hit(self, item: RateLimitItem, scope: str, caller: str, cost: int) -> bool:
        return await self._limiter.hit(item, scope, caller, cost=cost)

    def _let_through_unchecked(self) -> None:
        if not self.fail_open:
            raise RateLimitUnavailable
        RATE_LIMIT_UNCHECKED.inc()


def caller_key(
    viewer: Actor | None, peer: str | None, forwarded_for: list[str], trusted: list[Network]
) -> str:
    """Whose count a request is: the user's, else the client address's (`client_ip`)."""
    if viewer is not None:
        return f"user:{viewer.user_id}"
    return "ip:" + client_ip(peer, forwarded_for, trusted)


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
