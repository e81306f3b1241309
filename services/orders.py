"""Reading orders. Who may see which order is decided here, once, in `readable_orders`."""

from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from db.arrays import equals_any
from db.models import Order, OrderItem, OrderStatus
from db.rows import LightRow, LightSelect
from services.auth import Actor
from services.pagination import Page, page_from

ORDER_COLUMNS = (
    Order.id,
    Order.user_id,
    Order.status,
    Order.total_amount,
    Order.currency,
    Order.idempotency_key,
    Order.created_at,
    Order.updated_at,
)
ORDER_ITEM_COLUMNS = (
    OrderItem.id,
    OrderItem.order_id,
    OrderItem.product_id,
    OrderItem.quantity,
    OrderItem.unit_price,
)


def readable_orders(actor: Actor) -> LightSelect:
    """Every read of orders starts here: an actor sees their own orders, an admin sees all."""
    statement = select(*ORDER_COLUMNS)
    if not actor.is_admin:
        statement = statement.where(Order.user_id == actor.user_id)
    return statement


async def list_orders(
    session: AsyncSession,
    actor: Actor,
    *,
    status: OrderStatus | None,
    after_id: int | None,
    limit: int,
) -> Page[LightRow]:
    """The actor's own orders, newest first (admins too: this is "my orders")."""
    statement = readable_orders(actor).where(Order.user_id == actor.user_id)
    if status is not None:
        statement = statement.where(Order.status == status)
    if after_id is not None:
        statement = statement.where(Order.id < after_id)
    statement = statement.order_by(Order.id.desc()).limit(limit + 1)
    rows = (await session.execute(statement)).all()
    return page_from(rows, limit)


async def readable_orders_by_ids(
    session: AsyncSession, actor: Actor, ids: Sequence[int]
) -> dict[int, LightRow]:
    """The orders among `ids` that `actor` may read; the others are absent, as if missing."""
    rows = await session.execute(readable_orders(actor).where(equals_any(Order.id, ids)))
    return {row.id: row for row in rows}


async def items_by_order_ids(
    session: AsyncSession, order_ids: Sequence[int]
) -> dict[int, list[LightRow]]:
    """Line items grouped by order, in insertion order. Callers pass readable orders only."""
    statement = (
        select(*ORDER_ITEM_COLUMNS)
        .where(equals_any(OrderItem.order_id, order_ids))
        .order_by(OrderItem.order_id, OrderItem.id)
    )
    grouped: dict[int, list[LightRow]] = defaultdict(list)
    for row in await session.execute(statement):
        grouped[row.order_id].append(row)
    return grouped
