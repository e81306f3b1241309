"""Local allowances (gql/transport/allowance.py) over a real Redis: a busy caller's hits go in
blocks, the shared count never lets more through than the limit, a quiet caller and a caller
near its limit are counted exactly."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from core.redis import RedisCircuit, create_redis
from gql.transport.allowance import LocalAllowances
from gql.transport.ratelimit import RateLimiter
from tests.edge_support import REDIS_URL, delete_prefix, edge_settings, unique_prefix


@dataclass
class SharedCount:
    """The `limits` moving window in Redis, as every process sees it, with its round trips
    counted."""

    limiter: MovingWindowRateLimiter
    round_trips: int = 0
    hits_asked: list[int] = field(default_factory=list)

    async def hit(self, item: RateLimitItem, scope: str, caller: str, cost: int) -> bool:
        self.round_trips += 1
        self.hits_asked.append(cost)
        return await self.limiter.hit(item, scope, caller, cost=cost)

    async def counted(self, item: RateLimitItem, scope: str, caller: str) -> int:
        stats = await self.limiter.get_window_stats(item, scope, caller)
        return item.amount - stats.remaining


@pytest.fixture
async def shared() -> AsyncIterator[SharedCount]:
    prefix = unique_prefix()
    storage = RedisStorage(
        "async+" + REDIS_URL, implementation="redispy", key_prefix=f"{prefix}:ratelimit"
    )
    yield SharedCount(MovingWindowRateLimiter(storage))
    await delete_prefix(prefix)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_busy_caller_takes_its_hits_in_blocks(shared: SharedCount) -> None:
    item = parse("1000/minute")
    allowances = LocalAllowances(shared.hit, share=0.05)  # blocks of up to 50
    results = [await allowances.take(item, "request", "ip:10.0.0.1") for _ in range(500)]
    assert all(results)
    # 1, 2, 4, ..., 32, then 50 at a time: 17 round trips instead of 500.
    assert shared.hits_asked[:7] == [1, 2, 4, 8, 16, 32, 50]
    assert shared.round_trips <= 500 // 50 + 7
    # Every request served was counted in Redis before it was served; at most one block more.
    counted = await shared.counted(item, "request", "ip:10.0.0.1")
    assert 500 <= counted <= 500 + 50


async def test_processes_sharing_a_count_never_let_more_than_the_limit_through(
    shared: SharedCount,
) -> None:
    item = parse("200/minute")  # blocks of up to 10 at 5%
    processes = [LocalAllowances(shared.hit, share=0.05) for _ in range(3)]
    allowed = 0
    for n in range(600):
        allowed += await processes[n % 3].take(item, "request", "user:7")
    assert allowed <= 200
    # Refused early at most by what each process took and had not used yet.
    assert allowed >= 200 - 3 * (10 - 1)
    assert await shared.counted(item, "request", "user:7") == 200


async def test_concurrent_requests_of_one_caller_lose_no_hit(shared: SharedCount) -> None:
    item = parse("100/minute")
    allowances = LocalAllowances(shared.hit, share=0.1)
    results: list[bool] = []
    for _ in range(15):  # waves of 10 at once (the storage's pool has 10 connections)
        results += await asyncio.gather(
            *(allowances.take(item, "request", "user:8") for _ in range(10))
        )
    assert sum(results) <= 100
    assert sum(results) >= 100 - (10 - 1)


async def test_a_limit_below_one_over_the_share_is_counted_exactly(shared: SharedCount) -> None:
    item = parse("30/minute")  # 1% of 30 is under 1: blocks of 1
    allowances = LocalAllowances(shared.hit, share=0.01)
    results = [await allowances.take(item, "createOrder", "user:1") for _ in range(32)]
    assert results == [True] * 30 + [False] * 2
    assert shared.hits_asked == [1] * 32


async def test_near_its_limit_a_caller_goes_back_to_exact_hits(shared: SharedCount) -> None:
    item = parse("100/minute")
    allowances = LocalAllowances(shared.hit, share=0.1)
    results = [await allowances.take(item, "request", "user:2") for _ in range(110)]
    # No block taken ahead is wasted while the caller keeps using it: exactly the limit passes.
    assert results == [True] * 100 + [False] * 10
    assert await shared.counted(item, "request", "user:2") == 100


async def test_an_idle_caller_starts_again_from_single_hits(shared: SharedCount) -> None:
    clock = Clock()
    item = parse("1000/minute")
    allowances = LocalAllowances(shared.hit, share=0.05, ttl=1.0, clock=clock)
    for _ in range(8):  # blocks 1, 2, 4: 7 hits, then a block of 8
        await allowances.take(item, "request", "user:3")
    assert shared.hits_asked == [1, 2, 4, 8]
    clock.now += 1.5  # the rest of the block expired unused
    await allowances.take(item, "request", "user:3")
    assert shared.hits_asked[-1] == 1


async def test_each_caller_has_its_own_allowance(shared: SharedCount) -> None:
    item = parse("1000/minute")
    allowances = LocalAllowances(shared.hit, share=0.05)
    for _ in range(3):  # a hit, then a block of 2 that serves the third request too
        await allowances.take(item, "request", "user:4")
    await allowances.take(item, "request", "user:5")
    assert shared.hits_asked == [1, 2, 1]


async def test_the_rate_limiter_takes_allowances_only_when_asked() -> None:
    prefix = unique_prefix()
    exact = edge_settings(
        redis_url=REDIS_URL,
        redis_key_prefix=prefix,
        rate_limit_default="1000/minute",
        rate_limit_local_share=0.0,
    )
    ahead = exact.model_copy(update={"rate_limit_local_share": 0.05})
    redis = create_redis(exact)
    assert redis is not None
    try:
        counts = []
        for n, settings in enumerate((exact, ahead)):
            limiter = RateLimiter(settings, redis, RedisCircuit(settings.redis_retry_interval))
            for _ in range(20):
                assert await limiter.check(f"user:{n}") is None
            key = f"{prefix}:ratelimit:LIMITER/request/user:{n}/1000/1/minute"
            counts.append(await redis.llen(key))
        # Exact: 20 entries; ahead: blocks 1 + 2 + 4 + 8 + 16 taken by the 20th request.
        assert counts == [20, 31]
    finally:
        await redis.aclose()
        await delete_prefix(prefix)
