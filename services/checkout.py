"""Placing and cancelling orders: stock taken and given back under row locks, exactly once,
with an `order.created` / `order.cancelled` notification in the same transaction."""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Integer,
    Numeric,
    String,
    bindparam,
    func,
    insert,
    literal_column,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core.settings import Settings
from db.arrays import equals_any
from db.compiled import CompiledQuery, run_alone
from db.models import (
    Notification,
    Order,
    OrderItem,
    OrderStatus,
    Product,
    Reservation,
    ReservationStatus,
)
from db.reads import PooledReads
from db.rows import LightRow
from db.transactions import UNIQUE_VIOLATION, RetryTransaction, sqlstate_of, violated_constraint
from services import outbox, stock
from services.auth import Actor
from services.errors import (
    CurrencyMismatch,
    IdempotencyKeyReused,
    InsufficientStock,
    InvalidInput,
    OrderNotCancellable,
    OrderNotFound,
    ProductNotFound,
    ReservationNotFound,
)
from services.orders import ORDER_COLUMNS, ORDER_ITEM_COLUMNS, readable_orders
from services.reservations import check_not_lapsed, has_effective_status, own_reservations

IDEMPOTENCY_CONSTRAINT = "uq_orders_user_id_idempotency_key"
CANCELLABLE = (OrderStatus.PENDING, OrderStatus.CONFIRMED)
# orders.total_amount is NUMERIC(12, 2).
MAX_TOTAL = Decimal(10) ** 10

# The table, not the entity: a Core insert skips the ORM's bulk-insert bookkeeping.
_ORDER_ITEMS = OrderItem.metadata.tables[OrderItem.__tablename__]
# Built once, values bound per call: a statement built with .values() per call costs
# SQLAlchemy a new cache key (a walk of every value) each time, and the entity's ORM insert
# path on top; together most of the CPU of placing an order.
_INSERT_ORDER = insert(Order.metadata.tables[Order.__tablename__]).returning(*ORDER_COLUMNS)
_ORDER_BY_KEY = select(*ORDER_COLUMNS).where(
    Order.user_id == bindparam("user_id"), Order.idempotency_key == bindparam("key")
)

# Same-key requests of one user queue here, for the rest of the transaction, before either
# looks the key up: the second then finds the first's committed order and replays it, instead
# of racing it to the stock and the holds (and losing with InsufficientStock or
# ReservationNotHeld). One bigint key from user and idempotency key: hashtextextended gives
# 64 bits, so unrelated keys rarely share a lock (and sharing one only costs a short wait).
_LOCK_IDEMPOTENCY_KEY = text("SELECT pg_advisory_xact_lock(hashtextextended(:lock_name, 0))")


@dataclass(frozen=True, slots=True)
class OrderLine:
    product_id: int
    quantity: int


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """What the client asked for: units to take from stock now (`lines`) and holds of the
    viewer to turn into order items (`reservation_ids`); either may be empty, not both."""

    lines: tuple[OrderLine, ...]
    idempotency_key: str
    reservation_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class OrderResult:
    """An order with its items, each a mapping of column names (ORDER_COLUMNS,
    ORDER_ITEM_COLUMNS) to values; `created` is False when an earlier request with the same
    idempotency key had already placed it."""

    order: Mapping[str, Any]
    items: Sequence[Mapping[str, Any]]
    created: bool


def _result(order: LightRow, items: Sequence[LightRow], *, created: bool) -> OrderResult:
    return OrderResult(_columns(order), [_columns(item) for item in items], created)


def _columns(row: LightRow) -> Mapping[str, Any]:
    """A row's mapping view: its keys are the selected columns' names."""
    return cast(Mapping[str, Any], row._mapping)


def check_list_sizes(*, items: int, reservations: int, settings: Settings) -> None:
    """The bound on an order's lists. The edge calls it before decoding any ID, so a huge
    list costs nothing; `check_request` calls it again for callers other than the edge."""
    for name, count in (("items", items), ("reservationIds", reservations)):
        if count > settings.max_order_items:
            raise InvalidInput(f"{name} may list at most {settings.max_order_items} entries")


def check_request(request: OrderRequest, settings: Settings) -> None:
    key = request.idempotency_key
    if not key.strip():
        raise InvalidInput("idempotencyKey must not be empty")
    if len(key) > settings.max_idempotency_key_length:
        raise InvalidInput(
            f"idempotencyKey must be at most {settings.max_idempotency_key_length} characters"
        )
    if not request.lines and not request.reservation_ids:
        raise InvalidInput("an order needs at least one item or reservation")
    check_list_sizes(
        items=len(request.lines), reservations=len(request.reservation_ids), settings=settings
    )
    for line in request.lines:
        if not 1 <= line.quantity <= settings.max_item_quantity:
            raise InvalidInput(f"quantity must be between 1 and {settings.max_item_quantity}")
    if len({line.product_id for line in request.lines}) != len(request.lines):
        raise InvalidInput("each product may appear only once in items")
    if len(set(request.reservation_ids)) != len(request.reservation_ids):
        raise InvalidInput("each reservation may appear only once in reservationIds")


def _lock_name(actor: Actor, request: OrderRequest) -> str:
    """The advisory lock of an idempotency key (`_LOCK_IDEMPOTENCY_KEY`)."""
    return f"order:{actor.user_id}:{request.idempotency_key}"


# An order from stock alone in one call that is its own transaction (migration 0007): the
# steps of `create_order` below, in its order, for the plain success only.
_PLACE_ORDER_FROM_STOCK = CompiledQuery(
    sql="SELECT * FROM place_order_from_stock($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    parameter_names=(
        "user_id",
        "idempotency_key",
        "lock_name",
        "status",
        "product_ids",
        "quantities",
        "max_total",
        "correlation_id",
        "trace_context",
    ),
)


async def create_order_in_one_statement(
    reads: PooledReads, actor: Actor, request: OrderRequest, *, settings: Settings
) -> OrderResult | None:
    """The order of `request` placed and committed by one statement, when it takes items from
    stock alone and every rule lets it through at once; its locks last that statement only.
    None: nothing was written (holds to check out, an earlier order with the key, an unknown
    product, two currencies, too few units, too large a total, a lost race), and
    `create_order` then answers the request."""
    check_request(request, settings)
    if request.reservation_ids:
        return None
    lines = sorted(request.lines, key=lambda line: line.product_id)
    # The outbox row's values as `enqueue` writes them, but the payload: the function builds
    # it (as `_announcement` does) from what it read under its locks.
    notification = outbox.notification_values("order.created", {})
    trace = notification["trace_context"]
    product_ids = [line.product_id for line in lines]
    async with stock.one_writer_per_product(product_ids):
        rows = await run_alone(
            reads,
            _PLACE_ORDER_FROM_STOCK,
            user_id=actor.user_id,
            idempotency_key=request.idempotency_key,
            lock_name=_lock_name(actor, request),
            status=OrderStatus.CONFIRMED.value,
            product_ids=product_ids,
            quantities=[line.quantity for line in lines],
            max_total=MAX_TOTAL,
            correlation_id=notification["correlation_id"],
            trace_context=None if trace is None else json.dumps(trace),
        )
    if not rows:
        return None
    order = {column.key: rows[0][f"placed_{column.key}"] for column in ORDER_COLUMNS}
    order["status"] = OrderStatus(order["status"])
    items = [{column.key: row[column.key] for column in ORDER_ITEM_COLUMNS} for row in rows]
    return OrderResult(order, items, created=True)


async def create_order(
    session: AsyncSession, actor: Actor, request: OrderRequest, *, settings: Settings
) -> OrderResult:
    """Place an order, or return the one an identical earlier request placed. Run it in a
    transaction retried on `RetryTransaction` (see `db.transactions.run_in_transaction`).
    Concurrent requests with the same key run one after another (an advisory lock on the key,
    taken before the lookup), so each later one finds the first's order and takes nothing."""
    check_request(request, settings)
    # Its own statement, before the lookup: under READ COMMITTED the lookup's snapshot is
    # then taken after the wait, and sees an order the lock holder committed.
    await session.execute(_LOCK_IDEMPOTENCY_KEY, {"lock_name": _lock_name(actor, request)})
    existing = await _order_by_key(session, actor, request.idempotency_key)
    if existing is not None:
        return await _replay(session, existing, request)

    holds = await _live_holds(session, actor, request.reservation_ids)
    from_stock = stock.units_by_product(request.lines)
    quantities = from_stock + stock.units_by_product(holds)

    products = await stock.lock_products(session, quantities)
    missing = sorted(set(quantities) - set(products))
    if missing:
        raise ProductNotFound(missing[0])
    currencies = sorted({product.currency for product in products.values()})
    if len(currencies) > 1:
        raise CurrencyMismatch(currencies)
    await _check_stock(session, products, from_stock)

    total = sum((products[pid].price * qty for pid, qty in quantities.items()), Decimal(0))
    if total >= MAX_TOTAL:
        raise InvalidInput("the order total is beyond what one order may hold; split the order")
    if not holds:
        return await _place_from_stock(
            session, actor, request, products, from_stock, total=total, currency=currencies[0]
        )
    order = await _insert_order(session, actor, request, total=total, currency=currencies[0])
    await _confirm_holds(session, actor, request.reservation_ids, order_id=order.id)
    await stock.adjust(session, {pid: -qty for pid, qty in from_stock.items()})
    # Parameters as a list (one INSERT … VALUES per batch, "insertmanyvalues"), not a
    # multi-row .values(): SQLAlchemy caches this statement's compiled form, while it compiles
    # a multi-row .values() again on every call.
    inserted = await session.execute(
        insert(_ORDER_ITEMS).returning(*ORDER_ITEM_COLUMNS, sort_by_parameter_order=True),
        [
            {
                "order_id": order.id,
                "product_id": pid,
                "quantity": quantities[pid],
                "unit_price": products[pid].price,
            }
            for pid in sorted(quantities)
        ],
    )
    result = _result(order, sorted(inserted.all(), key=lambda item: item.id), created=True)
    await outbox.enqueue(session, kind="order.created", payload=_announcement(result))
    return result


# An order taken from stock alone, once its products are locked and checked: the order, the
# stock, the items and the outbox row written by one statement (data-modifying CTEs, each run
# once whatever the final SELECT reads) instead of four round trips with the products locked.
# The outbox payload is `_announcement`'s, its order id added by the database. A row per item,
# with the order's columns beside them under a `placed_` prefix.
_lines = (
    func.unnest(
        bindparam("product_ids", type_=ARRAY(BigInteger())),
        bindparam("quantities", type_=ARRAY(Integer())),
        bindparam("unit_prices", type_=ARRAY(Numeric(12, 2))),
    )
    .table_valued("product_id", "quantity", "unit_price", with_ordinality="n")
    .render_derived(name="lines")
)
_new_order = (
    insert(Order.metadata.tables[Order.__tablename__])
    .values(
        user_id=bindparam("order_user_id", type_=BigInteger()),
        status=bindparam("order_status"),
        total_amount=bindparam("order_total"),
        currency=bindparam("order_currency"),
        idempotency_key=bindparam("order_key"),
    )
    .returning(*ORDER_COLUMNS)
    .cte("new_order")
)
_taken = (
    update(Product)
    .where(Product.id == _lines.c.product_id)
    .values(stock=Product.stock - _lines.c.quantity, updated_at=func.now())
    .returning(Product.id)
    .cte("taken")
)
_new_items = (
    insert(_ORDER_ITEMS)
    .from_select(
        ["order_id", "product_id", "quantity", "unit_price"],
        select(_new_order.c.id, _lines.c.product_id, _lines.c.quantity, _lines.c.unit_price)
        # One order row: each line joins it (a cross join, said so).
        .select_from(_new_order.join(_lines, true()))
        .order_by(_lines.c.n),
    )
    .returning(*ORDER_ITEM_COLUMNS)
    .cte("new_items")
)
_new_notification = (
    insert(Notification.metadata.tables[Notification.__tablename__])
    .from_select(
        ["kind", "payload", "correlation_id", "trace_context"],
        select(
            # Named, bound per call: SQLAlchemy does not carry the values of anonymous
            # literals inside a CTE of a cached statement. (No parameter is named as a column
            # of a table the statement writes: Core would take it as a value to SET.)
            bindparam("note_kind", type_=String()),
            bindparam("note_payload", type_=JSONB()).op("||")(
                func.jsonb_build_object(literal_column("'orderId'"), _new_order.c.id)
            ),
            bindparam("note_correlation_id", type_=String()),
            bindparam("note_trace_context", type_=JSONB(none_as_null=True)),
        ),
    )
    .cte("new_notification")
)
_PLACE_FROM_STOCK = (
    select(
        *(_new_order.c[column.key].label(f"placed_{column.key}") for column in ORDER_COLUMNS),
        *(_new_items.c[column.key] for column in ORDER_ITEM_COLUMNS),
    )
    .select_from(_new_order.join(_new_items, _new_items.c.order_id == _new_order.c.id))
    .add_cte(_taken, _new_notification)
)


async def _place_from_stock(
    session: AsyncSession,
    actor: Actor,
    request: OrderRequest,
    products: Mapping[int, LightRow],
    from_stock: Mapping[int, int],
    *,
    total: Decimal,
    currency: str,
) -> OrderResult:
    pids = sorted(from_stock)
    prices = [products[pid].price for pid in pids]
    quantities = [from_stock[pid] for pid in pids]
    notification = outbox.notification_values(
        "order.created",
        _announced(
            user_id=actor.user_id,
            status=OrderStatus.CONFIRMED,
            total=total,
            currency=currency,
            lines=list(zip(pids, quantities, prices, strict=True)),
        ),
    )
    values = {
        **{f"note_{column}": value for column, value in notification.items()},
        "order_user_id": actor.user_id,
        "order_status": OrderStatus.CONFIRMED,
        "order_total": total,
        "order_currency": currency,
        "order_key": request.idempotency_key,
        "product_ids": pids,
        "quantities": quantities,
        "unit_prices": prices,
    }
    try:
        rows = [_columns(row) for row in await session.execute(_PLACE_FROM_STOCK, values)]
    except IntegrityError as error:
        _retry_if_the_key_was_taken(error)
        raise
    order = {column.key: rows[0][f"placed_{column.key}"] for column in ORDER_COLUMNS}
    items = sorted(
        ({column.key: row[column.key] for column in ORDER_ITEM_COLUMNS} for row in rows),
        key=lambda item: item["id"],
    )
    return OrderResult(order, items, created=True)


async def cancel_order(session: AsyncSession, actor: Actor, *, order_id: int) -> OrderResult:
    """Cancel a readable order and give its stock back exactly once: the conditional UPDATE
    of the order's status, taken after the product locks, decides which canceller acts."""
    found = await session.execute(
        readable_orders(admin=actor.is_admin).where(Order.id == order_id),
        {"actor_id": actor.user_id},
    )
    order = found.first()
    if order is None:
        raise OrderNotFound(order_id)
    if order.status not in CANCELLABLE:
        raise OrderNotCancellable(order_id, order.status.value)
    items = await _items_of(session, order_id)
    quantities = stock.units_by_product(items)
    await stock.lock_products(session, quantities)
    cancelled = await session.execute(
        update(Order)
        .where(Order.id == order_id, Order.status.in_(CANCELLABLE))
        .values(status=OrderStatus.CANCELLED, updated_at=func.now())
        .returning(*ORDER_COLUMNS)
        .execution_options(synchronize_session=False)
    )
    updated = cancelled.first()
    if updated is None:
        raise OrderNotCancellable(order_id, OrderStatus.CANCELLED.value)
    await stock.adjust(session, quantities)
    result = _result(updated, items, created=False)
    await outbox.enqueue(session, kind="order.cancelled", payload=_announcement(result))
    return result


async def _items_of(session: AsyncSession, order_id: int) -> list[LightRow]:
    statement = (
        select(*ORDER_ITEM_COLUMNS).where(OrderItem.order_id == order_id).order_by(OrderItem.id)
    )
    return list((await session.execute(statement)).all())


async def _order_by_key(session: AsyncSession, actor: Actor, key: str) -> LightRow | None:
    found = await session.execute(_ORDER_BY_KEY, {"user_id": actor.user_id, "key": key})
    return found.first()


async def _replay(session: AsyncSession, order: LightRow, request: OrderRequest) -> OrderResult:
    """The earlier order for this key, if the request is the same one; else a typed error."""
    items = await _items_of(session, order.id)
    held = (
        await session.execute(
            select(Reservation.id, Reservation.product_id, Reservation.quantity).where(
                Reservation.order_id == order.id
            )
        )
    ).all()
    # Counter subtraction keeps only positive counts: the units taken from stock.
    from_stock = stock.units_by_product(items) - stock.units_by_product(held)
    same_lines = from_stock == stock.units_by_product(request.lines)
    same_holds = {hold.id for hold in held} == set(request.reservation_ids)
    if not (same_lines and same_holds):
        raise IdempotencyKeyReused(request.idempotency_key)
    return _result(order, items, created=False)


async def _live_holds(
    session: AsyncSession, actor: Actor, reservation_ids: Sequence[int]
) -> list[LightRow]:
    """The actor's own reservations among `reservation_ids` (admins too may check out only
    theirs), each checked to be a live hold."""
    if not reservation_ids:
        return []
    owned = own_reservations(actor).where(equals_any(Reservation.id, reservation_ids))
    found = {row.id: row for row in await session.execute(owned)}
    for reservation_id in reservation_ids:
        row = found.get(reservation_id)
        if row is None:
            raise ReservationNotFound(reservation_id)
        check_not_lapsed(row)
    return [found[reservation_id] for reservation_id in reservation_ids]


async def _check_stock(
    session: AsyncSession, products: Mapping[int, LightRow], wanted: Mapping[int, int]
) -> None:
    """Every product has the units asked of it, counting the stock of lapsed holds, which is
    reclaimed here (under the caller's locks) rather than left to wait for the sweeper."""
    short = [pid for pid in sorted(wanted) if products[pid].stock < wanted[pid]]
    if not short:
        return
    reclaimed = await stock.reclaim_expired_holds(session, short)
    for pid in short:
        available = products[pid].stock + reclaimed.get(pid, 0)
        if available < wanted[pid]:
            raise InsufficientStock(pid, requested=wanted[pid], available=available)


async def _insert_order(
    session: AsyncSession, actor: Actor, request: OrderRequest, *, total: Decimal, currency: str
) -> LightRow:
    values = {
        "user_id": actor.user_id,
        "status": OrderStatus.CONFIRMED,
        "total_amount": total,
        "currency": currency,
        "idempotency_key": request.idempotency_key,
    }
    try:
        return (await session.execute(_INSERT_ORDER, values)).one()
    except IntegrityError as error:
        _retry_if_the_key_was_taken(error)
        raise


def _retry_if_the_key_was_taken(error: IntegrityError) -> None:
    if sqlstate_of(error) == UNIQUE_VIOLATION and (
        violated_constraint(error) == IDEMPOTENCY_CONSTRAINT
    ):
        # A concurrent request with this key committed first: start over to return its
        # order (or refuse a different payload), taking no stock.
        raise RetryTransaction from error


async def _confirm_holds(
    session: AsyncSession, actor: Actor, reservation_ids: Sequence[int], *, order_id: int
) -> None:
    """Turn the holds into order items. Their products are locked, so only a hold that lapsed
    since `_live_holds` read it can be missing here; the whole order then fails."""
    confirmed = await session.execute(
        update(Reservation)
        .where(
            equals_any(Reservation.id, reservation_ids),
            Reservation.user_id == actor.user_id,
            has_effective_status(ReservationStatus.HELD),
        )
        .values(status=ReservationStatus.CONFIRMED, order_id=order_id, updated_at=func.now())
        .returning(Reservation.id)
        .execution_options(synchronize_session=False)
    )
    done = set(confirmed.scalars())
    lost = [rid for rid in reservation_ids if rid not in done]
    if lost:
        again = await session.execute(
            own_reservations(actor).where(equals_any(Reservation.id, lost))
        )
        for row in again:
            check_not_lapsed(row)
        raise ReservationNotFound(lost[0])


def _announcement(result: OrderResult) -> dict[str, Any]:
    """The outbox payload: JSON-safe (money as decimal strings)."""
    order = result.order
    return {
        "orderId": order["id"],
        **_announced(
            user_id=order["user_id"],
            status=order["status"],
            total=order["total_amount"],
            currency=order["currency"],
            lines=[
                (item["product_id"], item["quantity"], item["unit_price"]) for item in result.items
            ],
        ),
    }


def _announced(
    *,
    user_id: int,
    status: OrderStatus,
    total: object,
    currency: str,
    lines: Sequence[tuple[int, int, object]],
) -> dict[str, Any]:
    """The payload but its `orderId`: what an order announces of itself."""
    return {
        "userId": user_id,
        "status": status.value,
        "total": {"amount": str(total), "currency": currency},
        "items": [
            {"productId": pid, "quantity": quantity, "unitPrice": str(price)}
            for pid, quantity, price in lines
        ],
    }
