"""Local allowances: hits of a rate limit taken from Redis ahead of use, in small blocks, and
spent in this process without a round trip.

A hit through redis-py costs about 100 µs of CPU, as much as the rest of a point read, and a
busy caller (a gateway, a page that fans out) makes many. So a caller that keeps coming takes
its hits in blocks: the first request takes one hit, as before; each allowance used up within
`ttl` doubles the next block, up to `share` of the limit; a caller that stops, or whose block
Redis refuses, is back to single, exact hits.

What exactness this costs, per limit and caller, with P processes and a block cap of
B = floor(share * limit) (`RATE_LIMIT_LOCAL_SHARE`, 0.01 by default):
- a caller may be refused up to P * (B - 1) requests early: hits taken and not used before
  their allowance expires still count in Redis;
- hits carry the time they were taken, up to `ttl` before the request they serve, so a moving
  window may see up to P * B more requests than the limit;
- with B = 1 (a limit under 2 / share: 200 a window at 1%, so every field limit by default)
  every hit is exact; the default 600/minute gets blocks of up to 6.
"""

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from limits import RateLimitItem

from core.bounded import BoundedCache

Hit = Callable[[RateLimitItem, str, str, int], Awaitable[bool]]
"""`hit(item, scope, caller, cost)`: take `cost` hits in the shared count, True if allowed."""


@dataclass(slots=True)
class Allowance:
    remaining: int
    expires_at: float
    block: int  # the size of the block this allowance came from
    taking: bool = False  # a block is on its way: others take single hits meanwhile


class LocalAllowances:
    def __init__(
        self,
        hit: Hit,
        share: float,
        *,
        ttl: float = 1.0,
        max_callers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hit = hit
        self._share = share
        self._clock = clock
        self._allowances: BoundedCache[tuple[RateLimitItem, str, str], Allowance] = BoundedCache(
            max_callers
        )
        self.ttl = ttl

    def block_cap(self, item: RateLimitItem) -> int:
        """The largest block taken ahead for `item`: a share of its amount, at least 1."""
        return max(1, math.floor(item.amount * self._share))

    async def take(self, item: RateLimitItem, scope: str, caller: str, cost: int = 1) -> bool:
        """Count `cost` hits of `caller` against `item` (under `scope`); False when refused."""
        key = (item, scope, caller)
        allowance = self._allowances.get(key)
        if allowance is None or self._clock() >= allowance.expires_at:
            allowance = Allowance(remaining=0, expires_at=self._clock() + self.ttl, block=0)
            self._allowances.put(key, allowance)
        if allowance.remaining >= cost:
            allowance.remaining -= cost
            return True
        if allowance.taking:
            # One block at a time per caller, so that what a process holds unused stays
            # under one block: a concurrent request is counted on its own.
            return await self._hit(item, scope, caller, cost)
        # Used up within its time (or new): a busy caller takes twice as much as last time.
        block = min(max(1, allowance.block * 2), self.block_cap(item))
        if block <= cost:
            allowance.block = block
            return await self._hit(item, scope, caller, cost)
        allowance.taking = True
        try:
            taken = await self._hit(item, scope, caller, block)
        finally:
            allowance.taking = False
        if taken:
            allowance.remaining += block - cost
            allowance.block = block
            allowance.expires_at = self._clock() + self.ttl
            return True
        # Redis refused the block: the caller is near its limit, back to exact hits.
        allowance.block = 0
        return await self._hit(item, scope, caller, cost)
