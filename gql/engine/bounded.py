"""The one bounded cache of the edge: a dict that starts over when full.

Every process-wide cache keyed by client input (documents, compiled plans, persisted queries)
must be bounded, or a client cycling through distinct inputs grows memory without end. Starting
over is the cheapest rule that bounds it: a lookup is one dict access (an LRU would reorder on
every hit, on the hot path of every request), and the price is a recomputation of the common
entries now and then, only under such a client."""

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    __slots__ = ("_entries", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._entries: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        return self._entries.get(key)

    def put(self, key: K, value: V) -> None:
        if len(self._entries) >= self.max_size and key not in self._entries:
            self._entries.clear()
        self._entries[key] = value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
