"""Stock: the row locks every write takes on products, and the one-statement adjustments.

Lock order, the same for every use case, so that no two transactions wait on each other in
a cycle: products first (ascending id, one `SELECT … FOR UPDATE`), then the reservation or
order rows the use case changes. (Before any of them, `createOrder` waits on the advisory
lock of its idempotency key, holding nothing else yet, so that wait closes no cycle either.)
"""

import asyncio
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Protocol

from sqlalchemy import (
    ColumnElement,
    String,
    bindparam,
    func,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from core.correlation import current_correlation_id
from db.arrays import equals_any, equals_any_parameter
from db.models import Product, Reservation, ReservationStatus
from db.rows import LightRow

LOCKED_PRODUCT_COLUMNS = (Product.id, Product.price, Product.currency, Product.stock)

# A lock per product with writes waiting in this process; gone when none waits.
_WRITERS: "weakref.WeakValueDictionary[int, asyncio.Lock]" = weakref.WeakValueDictionary()


@asynccontextmanager
async def one_writer_per_product(product_ids: Iterable[int]) -> AsyncIterator[None]:
    """Within this process, one one-statement write at a time per product: the others wait
    here, in line (asyncio's locks are first come, first served). In PostgreSQL's lock queue
    each would keep a backend waiting, woken at every commit to check the row again: with 32
    clients on one product that doubled the database's CPU per hold and put p99 past 80 ms
    (docs/decisions.md). The row lock still decides between processes. Locks are taken in
    ascending id order, as the row locks are, so two writes never wait on each other in a
    cycle."""
    async with AsyncExitStack() as stack:
        for product_id in sorted(set(product_ids)):
            lock = _WRITERS.get(product_id)
            if lock is None:
                lock = _WRITERS[product_id] = asyncio.Lock()
            await stack.enter_async_context(lock)
        yield


def note_correlation_id() -> ColumnElement[str]:
    """`booking.correlation_id` for the rest of the transaction, set by the statement that
    takes a write's locks: the change triggers put it in their notifications (migration 0005,
    services/events.py), so a subscriber's log names the request that wrote. In a statement
    the write runs anyway, not one more round trip; bound to `note_correlation_id` (a name no
    table has: Core would take a column's name in an UPDATE for a value to SET)."""
    # The constants as SQL text: anonymous literals in a CTE of a cached statement (the
    # reservation's one-statement hold) lose their values.
    return func.set_config(
        literal_column("'booking.correlation_id'"),
        bindparam("note_correlation_id", type_=String()),
        literal_column("true"),
    ).label("correlation_noted")


def correlation_parameter() -> dict[str, str]:
    return {"note_correlation_id": current_correlation_id() or ""}


# Built once, the ids bound per call: SQLAlchemy memoizes a statement's cache key, so
# reusing the object spares a walk of it on every order.
_LOCK_PRODUCTS = (
    select(*LOCKED_PRODUCT_COLUMNS, note_correlation_id())
    .where(equals_any_parameter(Product.id, "ids"))
    .order_by(Product.id)
    .with_for_update()
)

_ADJUST = text(
    "UPDATE products SET stock = products.stock + v.delta, updated_at = now() "
    "FROM unnest(CAST(:ids AS BIGINT[]), CAST(:deltas AS INTEGER[])) AS v(id, delta) "
    "WHERE products.id = v.id"
)


async def lock_products(session: AsyncSession, product_ids: Iterable[int]) -> dict[int, LightRow]:
    """Lock the products in ascending id order and return their current price, currency and
    stock: the values read under the lock are the ones the transaction may act on."""
    locked = await session.execute(
        _LOCK_PRODUCTS, {"ids": sorted(set(product_ids)), **correlation_parameter()}
    )
    return {row.id: row for row in locked}


async def adjust(session: AsyncSession, deltas: Mapping[int, int]) -> None:
    """Add `deltas[id]` to each product's stock in one statement. The caller holds the locks;
    the `stock >= 0` CHECK is the last line of defence against a bug in that reasoning."""
    changes = {product_id: delta for product_id, delta in deltas.items() if delta}
    if not changes:
        return
    ids = sorted(changes)
    await session.execute(_ADJUST, {"ids": ids, "deltas": [changes[i] for i in ids]})


async def expire_lapsed_holds(session: AsyncSession, which: ColumnElement[bool]) -> list[LightRow]:
    """Expire the lapsed HELD reservations among `which`, give their stock back, and return
    the (product_id, quantity) of each hold this call expired. The caller holds the products'
    locks. The conditional UPDATE decides, row by row, who expires a hold: whoever it returns
    the row to (this call, another sweeper or a release), so stock comes back exactly once."""
    statement = (
        update(Reservation)
        .where(
            which,
            Reservation.status == ReservationStatus.HELD,
            Reservation.expires_at <= func.now(),
        )
        .values(status=ReservationStatus.EXPIRED, updated_at=func.now())
        .returning(Reservation.product_id, Reservation.quantity)
        .execution_options(synchronize_session=False)
    )
    expired = list((await session.execute(statement)).all())
    await adjust(session, units_by_product(expired))
    return expired


class Units(Protocol):
    """Anything that counts units of a product: a hold, an order item, a requested line."""

    @property
    def product_id(self) -> int: ...

    @property
    def quantity(self) -> int: ...


def units_by_product(lines: Iterable[Units | LightRow]) -> Counter[int]:
    """Units per product of rows with `product_id` and `quantity` (holds, order items)."""
    units: Counter[int] = Counter()
    for line in lines:
        units[line.product_id] += line.quantity
    return units


async def reclaim_expired_holds(
    session: AsyncSession, product_ids: Iterable[int]
) -> dict[int, int]:
    """Expire the lapsed holds on products whose locks the caller holds (an order or a hold
    that finds too little stock reclaims them instead of waiting for the sweeper)."""
    which = equals_any(Reservation.product_id, sorted(set(product_ids)))
    return dict(units_by_product(await expire_lapsed_holds(session, which)))
