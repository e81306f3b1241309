"""Per-request DataLoaders: each batches its keys into one `= ANY(:keys)` statement and
answers in key order. They hand back light rows; the types turn rows into GraphQL objects."""

from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from db.compiled import Reader
from gql.engine.internals import CheapDataLoader
from services import catalog, orders, reservations, users
from services.auth import Actor

if TYPE_CHECKING:
    from gql.schema.context import Context

Row = Any
# A service's read of the rows among some ids that an actor may read (`orders.readable_...`).
ReadableByIds = Callable[[Reader, Actor, Sequence[int]], Awaitable[Mapping[int, Row]]]


class _RequestLoader(CheapDataLoader):
    """A loader of one request (see `CheapDataLoader`: a request makes its loaders anew)."""

    # Each subclass defines it as a method; it takes any sequence of keys (`load_level`).
    batch_load_fn: Callable[[Sequence[Any]], Coroutine[Any, Any, list[Any]]]

    def __init__(self, context: "Context") -> None:
        super().__init__()
        self.context = context

    async def load_level(self, keys: Sequence[Any], *, alone: bool) -> list[Any]:
        """A level's distinct keys in one batch. Below a list field (`alone`) the level is
        already the whole batch, so skip the per-key futures of `load_many`: they cost more
        than the query for a page of orders. Below a single-object field (`node` under
        aliases, `_entities`) siblings may want the same level: join the queue to batch."""
        if alone:
            return await self.batch_load_fn(keys)
        return await self.load_many(keys)

    async def _load_readable(
        self, readable_by_ids: ReadableByIds, keys: Sequence[int]
    ) -> list[Row | None]:
        """The rows of `keys` that the viewer may read, in key order; None for the others."""
        actor = self.context.require_viewer()
        async with self.context.read_turn() as reader:
            found = await readable_by_ids(reader, actor, keys)
        return [found.get(key) for key in keys]


class ProductByIdLoader(_RequestLoader):
    async def batch_load_fn(self, keys: Sequence[int]) -> list[Row | None]:
        return await self.load_level(keys, alone=True)

    async def load_alone(self, key: int) -> Row | None:
        """One product when nothing in the request can batch with it (a point read: its
        operation is this one field), without the loader's queue and scheduled batch. The row
        is primed into the loader's cache, so a general path running after finds it."""
        async with self.context.read_turn() as reader:
            row = await catalog.product_by_id(reader, key)
        self.prime(key, row)
        return row

    async def load_level(
        self, keys: Sequence[Any], *, alone: bool, columns: tuple[str, ...] | None = None
    ) -> list[Any]:
        """As `_RequestLoader.load_level`; a list's level also reads only `columns`."""
        if not alone:
            return await self.load_many(keys)
        async with self.context.read_turn() as reader:
            found = await catalog.products_by_ids(reader, keys, columns=columns)
        return [found.get(key) for key in keys]


class ItemsByOrderIdLoader(_RequestLoader):
    async def batch_load_fn(self, keys: Sequence[int]) -> list[list[Row]]:
        async with self.context.read_turn() as reader:
            found = await orders.items_by_order_ids(reader, keys)
        return [found.get(key, []) for key in keys]


class OrderByIdLoader(_RequestLoader):
    """Only orders the viewer may read; others come back as None, like missing ones."""

    async def batch_load_fn(self, keys: Sequence[int]) -> list[Row | None]:
        return await self._load_readable(orders.readable_orders_by_ids, keys)


class UserByIdLoader(_RequestLoader):
    """Only users the viewer may read: themselves, or anyone for an admin."""

    async def batch_load_fn(self, keys: Sequence[int]) -> list[Row | None]:
        return await self._load_readable(users.readable_users_by_ids, keys)


class ReservationByIdLoader(_RequestLoader):
    """Only reservations the viewer may read; others come back as None, like missing ones."""

    async def batch_load_fn(self, keys: Sequence[int]) -> list[Row | None]:
        actor = self.context.require_viewer()
        # Read through the ORM (rows with attributes, like the reservation mutations').
        async with self.context.session_turn() as session:
            found = await reservations.readable_reservations_by_ids(session, actor, keys)
        return [found.get(key) for key in keys]
