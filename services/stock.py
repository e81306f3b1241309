"""Stock: the row locks every write takes on products, and the one-statement adjustments.

Lock order, the same for every use case, so that no two transactions wait on each other in
a cycle: products first (ascending id, one `SELECT … FOR UPDATE`), then the reservation or
order rows the use case changes.
"""

from collections import defaultdict
from collections.abc import Iterable, Mapping

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from db.arrays import equals_any
from db.models import Product, Reservation, ReservationStatus
from db.rows import LightRow

LOCKED_PRODUCT_COLUMNS = (Product.id, Product.price, Product.currency, Product.stock)

_ADJUST = text(
    "UPDATE products SET stock = products.stock + v.delta, updated_at = now() "
    "FROM unnest(CAST(:ids AS BIGINT[]), CAST(:deltas AS INTEGER[])) AS v(id, delta) "
    "WHERE products.id = v.id"
)


async def lock_products(session: AsyncSession, product_ids: Iterable[int]) -> dict[int, LightRow]:
    """Lock the products in ascending id order and return their current price, currency and
    stock: the values read under the lock are the ones the transaction may act on."""
    statement = (
        select(*LOCKED_PRODUCT_COLUMNS)
        .where(equals_any(Product.id, sorted(set(product_ids))))
        .order_by(Product.id)
        .with_for_update()
    )
    return {row.id: row for row in await session.execute(statement)}


async def adjust(session: AsyncSession, deltas: Mapping[int, int]) -> None:
    """Add `deltas[id]` to each product's stock in one statement. The caller holds the locks;
    the `stock >= 0` CHECK is the last line of defence against a bug in that reasoning."""
    changes = {product_id: delta for product_id, delta in deltas.items() if delta}
    if not changes:
        return
    ids = sorted(changes)
    await session.execute(_ADJUST, {"ids": ids, "deltas": [changes[i] for i in ids]})


async def reclaim_expired_holds(
    session: AsyncSession, product_ids: Iterable[int]
) -> dict[int, int]:
    """Expire the lapsed holds on products whose locks the caller holds, and give their stock
    back. The conditional UPDATE decides, row by row, who expires a hold: whoever it returns
    the row to (this call, a sweeper or a release), so stock comes back exactly once."""
    statement = (
        update(Reservation)
        .where(
            equals_any(Reservation.product_id, sorted(set(product_ids))),
            Reservation.status == ReservationStatus.HELD,
            Reservation.expires_at <= func.now(),
        )
        .values(status=ReservationStatus.EXPIRED, updated_at=func.now())
        .returning(Reservation.product_id, Reservation.quantity)
        .execution_options(synchronize_session=False)
    )
    returned: dict[int, int] = defaultdict(int)
    for row in await session.execute(statement):
        returned[row.product_id] += row.quantity
    await adjust(session, returned)
    return dict(returned)
