"""Reading orders. Who may see which order is decided here, once, in `readable_orders`.

These reads feed responses: their money columns (`total_amount`, `unit_price`) come as the
exact decimal text PostgreSQL gives (`db.compiled.exact_text`), not as Decimals."""

from collections import defaultdict
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, Text, bindparam, cast, func, literal_column, select
from sqlalchemy.dialects.postgresql import aggregate_order_by

from db.arrays import equals_any_parameter
from db.compiled import (
    CompiledQuery,
    Reader,
    Record,
    columns_named,
    compile_query,
    exact_text,
    fetch,
    fetch_by_id,
)
from db.json_objects import (
    Member,
    Render,
    iso_timestamp,
    json_column,
    json_object,
    money,
    nested,
    value,
)
from db.models import Order, OrderItem, OrderStatus, Product
from db.rows import LightSelect
from services.auth import Actor
from services.catalog import PRODUCT_JSON
from services.global_ids import global_id_sql
from services.pagination import Page, Window, page_from

ORDER_COLUMNS = (
    Order.id,
    Order.user_id,
    Order.status,
    exact_text(Order.total_amount),
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
    exact_text(OrderItem.unit_price),
)


def readable_orders(*, admin: bool) -> LightSelect:
    """Every read of orders starts here: an actor sees their own orders (the actor's id is bound
    as `:actor_id`), an admin sees all."""
    statement = select(*ORDER_COLUMNS)
    if not admin:
        statement = statement.where(Order.user_id == bindparam("actor_id"))
    return statement


@lru_cache(maxsize=256)
def _list_orders_query(
    *,
    by_status: bool,
    after: bool,
    before: bool,
    backward: bool,
    columns: tuple[str, ...] | None,
    json: tuple[Member, ...] | None = None,
) -> CompiledQuery:
    # "My orders" for admins too: the non-admin rule is exactly "owned by the actor".
    statement = readable_orders(admin=False)
    if json is not None:
        statement = statement.with_only_columns(Order.id, json_column(json, ORDER_JSON))
    elif columns is not None:
        statement = statement.with_only_columns(*columns_named(Order, columns, ORDER_COLUMNS))
    if by_status:
        statement = statement.where(Order.status == bindparam("status"))
    if after:
        statement = statement.where(Order.id < bindparam("after_id"))
    if before:
        statement = statement.where(Order.id > bindparam("before_id"))
    # Newest first; a backward page is read from the window's end, in reverse.
    statement = statement.order_by(Order.id.asc() if backward else Order.id.desc())
    return compile_query(statement.limit(bindparam("limit")))


@lru_cache(maxsize=16)
def _count_orders_query(*, by_status: bool) -> CompiledQuery:
    # The same rule as `_list_orders_query`, counted.
    statement = readable_orders(admin=False).with_only_columns(
        func.count().label("count"), maintain_column_froms=True
    )
    if by_status:
        statement = statement.where(Order.status == bindparam("status"))
    return compile_query(statement)


@lru_cache
def _orders_by_ids_query(*, admin: bool) -> CompiledQuery:
    return compile_query(readable_orders(admin=admin).where(equals_any_parameter(Order.id)))


_items_by_order_ids_query = compile_query(
    select(*ORDER_ITEM_COLUMNS)
    .where(equals_any_parameter(OrderItem.order_id))
    .order_by(OrderItem.order_id, OrderItem.id)
)

# What PostgreSQL can render of a line item as JSON (db.json_objects), by attribute. Its money
# is in its order's currency; the subtotal is computed as `Decimal(unit_price) * quantity`
# would be (NUMERIC keeps the scale: 2 places).
ITEM_JSON: dict[str, Render] = {
    "id": value(global_id_sql("OrderItem", OrderItem.id)),
    "quantity": value(OrderItem.quantity),
    "unit_price": money(OrderItem.unit_price, Order.currency),
    "subtotal": money(OrderItem.unit_price * OrderItem.quantity, Order.currency),
    "product": nested(PRODUCT_JSON),
}


def _items_array(members: tuple[Member, ...]) -> ColumnElement[Any]:
    """An order's items as a JSON array (`[]` for none), for the order of the enclosing
    statement (correlated on `orders`)."""
    items: Any = OrderItem.__table__
    if any(member.attribute == "product" for member in members):
        items = items.join(Product.__table__, Product.id == OrderItem.product_id)
    item = json_object(members, ITEM_JSON)
    array = func.json_agg(aggregate_order_by(item, OrderItem.id))
    return (
        select(func.coalesce(array, literal_column("'[]'::json")))
        .select_from(items)
        .where(OrderItem.order_id == Order.id)
        .scalar_subquery()
    )


# What PostgreSQL can render of an order as JSON (db.json_objects), by attribute; statuses
# are written as their names, which are their stored values.
ORDER_JSON: dict[str, Render] = {
    "id": value(global_id_sql("Order", Order.id)),
    "status": value(Order.status),
    "total": money(Order.total_amount, Order.currency),
    "idempotency_key": value(Order.idempotency_key),
    "created_at": value(iso_timestamp(Order.created_at)),
    "updated_at": value(iso_timestamp(Order.updated_at)),
    "items": _items_array,
}


def check_order_json(members: tuple[Member, ...]) -> None:
    """Raise `Unrenderable` unless `list_orders` can render orders with these members."""
    json_object(members, ORDER_JSON)


@lru_cache(maxsize=64)
def _items_json_query(members: tuple[Member, ...]) -> CompiledQuery:
    # As text: the pool's connections decode `json` into Python objects.
    items = cast(_items_array(members), Text)
    return compile_query(select(Order.id, items).where(equals_any_parameter(Order.id)))


def check_items_json(members: tuple[Member, ...]) -> None:
    """Raise `Unrenderable` unless `items_json_by_order_ids` can render these members."""
    _items_json_query(members)


async def list_orders(
    reader: Reader,
    actor: Actor,
    *,
    status: OrderStatus | None,
    window: Window[int],
    columns: tuple[str, ...] | None = None,
    json: tuple[Member, ...] | None = None,
) -> Page[Record]:
    """The actor's own orders, newest first (admins too: this is "my orders"), within
    `window` (keyed by id); `columns` narrows the rows as in `catalog.products_by_ids`. With
    `json`, rows are the id and the order as a JSON object of these members (text, in column
    `json`; items included, see `check_order_json`)."""
    query = _list_orders_query(
        by_status=status is not None,
        after=window.after is not None,
        before=window.before is not None,
        backward=window.backward,
        columns=columns,
        json=json,
    )
    rows = await fetch(
        reader,
        query,
        actor_id=actor.user_id,
        status=status.value if status is not None else None,
        after_id=window.after,
        before_id=window.before,
        limit=window.limit + 1,
    )
    return page_from(rows, window)


async def count_orders(reader: Reader, actor: Actor, *, status: OrderStatus | None) -> int:
    """How many orders `list_orders` would list in all: a connection's `totalCount`."""
    query = _count_orders_query(by_status=status is not None)
    status_value = status.value if status is not None else None
    (row,) = await fetch(reader, query, actor_id=actor.user_id, status=status_value)
    return int(row["count"])


async def readable_orders_by_ids(
    reader: Reader, actor: Actor, ids: Sequence[int]
) -> dict[int, Record]:
    """The orders among `ids` that `actor` may read; the others are absent, as if missing."""
    query = _orders_by_ids_query(admin=actor.is_admin)
    return await fetch_by_id(reader, query, ids, actor_id=actor.user_id)


async def items_by_order_ids(reader: Reader, order_ids: Sequence[int]) -> dict[int, list[Record]]:
    """Line items grouped by order, in insertion order. Callers pass readable orders only."""
    grouped: dict[int, list[Record]] = defaultdict(list)
    for row in await fetch(reader, _items_by_order_ids_query, keys=list(order_ids)):
        grouped[row["order_id"]].append(row)
    return grouped


async def items_json_by_order_ids(
    reader: Reader, order_ids: Sequence[int], members: tuple[Member, ...]
) -> dict[int, str]:
    """Each order's line items as a JSON array (in insertion order) of objects with `members`
    (attributes of `ITEM_JSON`), built by PostgreSQL. Callers pass readable orders only.
    Raises `Unrenderable` for members it cannot render."""
    rows = await fetch(reader, _items_json_query(members), keys=list(order_ids))
    return {order_id: items for order_id, items in rows}
