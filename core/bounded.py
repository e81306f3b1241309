"""The one bounded cache: a dict that starts over when full.

Every process-wide cache keyed by client input (documents, compiled plans, selection trees,
persisted queries, resolved tokens) must be bounded, or a client cycling through distinct inputs
grows memory without end. Starting over is the cheapest rule that bounds it: a lookup is one
dict access (an LRU would reorder on every hit, on the hot path of every request), and the price
is a recomputation of the common entries now and then, only under such a client.

In `core/` because every layer has such a cache (`services.auth.ActorCache` too), and `services/`
may not import the edge. `ExpiringCache` adds an expiry per entry, for answers trusted a while."""

import time
from collections.abc import Callable, ItemsView
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    __slots__ = ("_entries", "get", "max_size")

    get: Callable[[K], V | None]
    """The value cached for a key, or None. The dict's own bound `get`, not a method that calls
    it: a lookup costs one builtin call (the plans cache is read once per completed object)."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._entries: dict[K, V] = {}
        self.get = self._entries.get  # `clear` keeps this dict, so this stays its `get`

    def put(self, key: K, value: V) -> None:
        """Cache `value`; a new key in a full cache empties it first."""
        if len(self._entries) >= self.max_size and key not in self._entries:
            self._entries.clear()
        self._entries[key] = value

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def items(self) -> ItemsView[K, V]:
        return self._entries.items()

    def __len__(self) -> int:
        return len(self._entries)


class ExpiringCache(Generic[K, V]):
    """A `BoundedCache` whose entries each expire: what the authentication caches (API tokens,
    JWT subjects, verified JWTs) keep for a while and then ask again."""

    __slots__ = ("_clock", "_entries")

    def __init__(self, max_size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: BoundedCache[K, tuple[V, float]] = BoundedCache(max_size)
        self._clock = clock

    def get(self, key: K) -> V | None:
        """The value, or None when absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() < entry[1]:
            return entry[0]
        self._entries.discard(key)
        return None

    def put(self, key: K, value: V, ttl: float) -> None:
        """Keep `value` for `ttl` seconds (nothing kept when `ttl` is not positive)."""
        if ttl > 0:
            self._entries.put(key, (value, self._clock() + ttl))
