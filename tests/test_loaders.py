"""The request loaders are aiodataloader's DataLoader made and scheduled more cheaply
(gql/schema/loaders.py): each is checked here against the library's own behaviour."""

import asyncio
from collections.abc import Sequence
from typing import Any

from aiodataloader import DataLoader

from gql.schema.loaders import _RequestLoader


class _Recording(_RequestLoader):
    async def batch_load_fn(self, keys: Sequence[Any]) -> list[Any]:
        self.context.append(list(keys))
        return [f"value {key}" for key in keys]


class _Reference(DataLoader[Any, Any]):
    def __init__(self, batches: list[list[Any]]) -> None:
        super().__init__()
        self.batches = batches

    async def batch_load_fn(self, keys: Sequence[Any]) -> list[Any]:
        self.batches.append(list(keys))
        return [f"value {key}" for key in keys]


async def _hops(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def _load_after(loader: DataLoader[Any, Any], key: Any, hops: int) -> Any:
    await _hops(hops)
    return await loader.load(key)


async def _scenario(loader: DataLoader[Any, Any], plan: list[tuple[Any, int]]) -> list[Any]:
    """Each (key, hops): a task that loads `key` after `hops` turns of the loop; plus loads
    made straight away and a key loaded twice."""
    first = loader.load("first")
    again = loader.load("first")
    tasks = [asyncio.ensure_future(_load_after(loader, key, hops)) for key, hops in plan]
    return [await first, await again, *(await asyncio.gather(*tasks))]


PLANS = [
    [],
    [("a", 0), ("b", 0)],
    [("a", 0), ("b", 1), ("c", 2), ("d", 3), ("e", 4), ("f", 6)],
    [("a", 5), ("b", 5), ("first", 1), ("c", 2)],
]


async def test_a_request_loader_batches_keys_as_the_library_does() -> None:
    for plan in PLANS:
        ours: list[list[Any]] = []
        theirs: list[list[Any]] = []
        our_values = await _scenario(_Recording(ours), plan)  # type: ignore[arg-type]
        their_values = await _scenario(_Reference(theirs), plan)
        assert our_values == their_values
        assert ours == theirs, plan


async def test_a_request_loader_starts_in_the_state_the_library_gives_it() -> None:
    ours = _Recording([])  # type: ignore[arg-type]
    theirs = _Reference([])
    mine = {k: v for k, v in vars(ours).items() if k != "context"}
    reference = {k: v for k, v in vars(theirs).items() if k not in ("batches", "get_cache_key")}
    assert mine == reference
    assert ours.get_cache_key("key") == theirs.get_cache_key("key") == "key"
    assert (ours.batch, ours.max_batch_size, ours.cache) == (True, None, True)
