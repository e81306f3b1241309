"""Holds on stock: reserving takes stock for a while; releasing, expiring or checking out ends
the hold. Whoever moves a hold out of HELD (one conditional UPDATE) is the one who acts on its
stock, so it comes back exactly once however many releases and sweepers race for it."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    Interval,
    bindparam,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from core.settings import Settings
from db.arrays import equals_any
from db.compiled import compile_query, run_alone
from db.models import Product, Reservation, ReservationStatus
from db.reads import PooledReads
from db.rows import LightRow, LightSelect
from services import stock
from services.auth import Actor
from services.errors import (
    InsufficientStock,
    InvalidInput,
    ProductNotFound,
    ReservationExpired,
    ReservationNotFound,
    ReservationNotHeld,
)
from services.pagination import Page, Window, page_from

RESERVATION_COLUMNS = (
    Reservation.id,
    Reservation.user_id,
    Reservation.product_id,
    Reservation.order_id,
    Reservation.quantity,
    Reservation.status,
    Reservation.expires_at,
    Reservation.created_at,
    Reservation.updated_at,
)


def _reservations(actor: Actor, *, admin_sees_all: bool) -> LightSelect:
    statement = select(*RESERVATION_COLUMNS, _lapsed().label("lapsed"))
    if not (admin_sees_all and actor.is_admin):
        statement = statement.where(Reservation.user_id == actor.user_id)
    return statement


# Who may do what with a hold, in one place. A hold is its owner's to use or release: admins
# may read any reservation (`node(id:)`), but a write — release, check out — acts only on the
# caller's own holds, admins included; anyone else's hold is ReservationNotFound to them.


def readable_reservations(actor: Actor) -> LightSelect:
    """Every read of reservations by ID starts here: a user sees their own, an admin sees all.
    The `lapsed` column says whether the row is past its deadline, by the database's clock."""
    return _reservations(actor, admin_sees_all=True)


def own_reservations(actor: Actor) -> LightSelect:
    """Every write of reservations (and the viewer's own list) starts here: only the actor's
    holds, whether or not the actor is an admin. Carries `lapsed` like the readable ones."""
    return _reservations(actor, admin_sees_all=False)


def _lapsed() -> ColumnElement[bool]:
    return Reservation.expires_at <= func.now()


def effective_status(row: LightRow, now: datetime) -> ReservationStatus:
    """The status a client sees, the one rule for it: a lapsed hold is no hold, so a HELD row
    past its deadline is EXPIRED whether or not the sweeper reached it. The database's verdict
    (`lapsed`, by its clock) wins when the row carries it; else the deadline is compared with
    `now`. `has_effective_status` is the same rule as a SQL condition."""
    lapsed = getattr(row, "lapsed", None)
    if lapsed is None:
        lapsed = row.expires_at <= now
    status: ReservationStatus = row.status
    if status is ReservationStatus.HELD and lapsed:
        return ReservationStatus.EXPIRED
    return status


def has_effective_status(status: ReservationStatus) -> ColumnElement[bool]:
    """`effective_status(row) is status`, as a SQL condition (by the database's clock)."""
    held = Reservation.status == ReservationStatus.HELD
    if status is ReservationStatus.HELD:
        return held & ~_lapsed()
    if status is ReservationStatus.EXPIRED:
        return (Reservation.status == ReservationStatus.EXPIRED) | (held & _lapsed())
    return Reservation.status == status


def check_not_lapsed(row: LightRow) -> None:
    """A hold can be released or checked out only while HELD and before its deadline."""
    status = effective_status(row, datetime.now(UTC))
    if status is ReservationStatus.EXPIRED:
        raise ReservationExpired(row.id)
    if status is not ReservationStatus.HELD:
        raise ReservationNotHeld(row.id, status.value)


# Built once, values bound per call (as services.checkout._INSERT_ORDER): the table's insert,
# the hold's end computed by the database's clock like every expiry check.
_INSERT_HOLD = (
    insert(Reservation.metadata.tables[Reservation.__tablename__])
    .values(expires_at=func.now() + bindparam("ttl", type_=Interval()))
    .returning(*RESERVATION_COLUMNS)
)


# The common case in one statement: take the units if the product has them (the conditional
# UPDATE waits for, then re-checks, a concurrent taker's row) and insert the hold from what it
# returned. The product's row lock is then held for this statement and the COMMIT only, not
# across the round trips of lock, update and insert: with many clients holding one product,
# each waited for all of those of every client before it.
_taken = (
    update(Product)
    .where(
        Product.id == bindparam("product_id", type_=BigInteger()),
        Product.stock >= bindparam("quantity", type_=Integer()),
        # For the change trigger's notification (services.stock.note_correlation_id).
        stock.note_correlation_id().is_not(None),
    )
    .values(stock=Product.stock - bindparam("quantity", type_=Integer()), updated_at=func.now())
    .returning(Product.id)
    .cte("taken")
)
_reservations_table = Reservation.metadata.tables[Reservation.__tablename__]
_TAKE_AND_HOLD = (
    insert(_reservations_table)
    .from_select(
        ["user_id", "product_id", "quantity", "status", "expires_at"],
        select(
            bindparam("user_id", type_=BigInteger()),
            _taken.c.id,
            bindparam("quantity", type_=Integer()),
            # As SQL text: the statement also runs compiled (`compile_query` binds names only).
            literal_column(f"'{ReservationStatus.HELD.value}'"),
            func.now() + bindparam("ttl", type_=Interval()),
        ),
    )
    .add_cte(_taken)
    .returning(*RESERVATION_COLUMNS)
)


@dataclass(frozen=True, slots=True)
class HoldRequest:
    """A hold asked for by `actor`, checked (`hold_request`)."""

    user_id: int
    product_id: int
    quantity: int
    ttl: timedelta

    def values(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "product_id": self.product_id,
            "quantity": self.quantity,
            "ttl": self.ttl,
        }


def hold_request(
    actor: Actor, *, product_id: int, quantity: int, ttl_seconds: int | None, settings: Settings
) -> HoldRequest:
    """`quantity` units of a product for `ttl_seconds` (None: the configured default,
    `hold_ttl_default_seconds`), within the configured bounds."""
    if ttl_seconds is None:
        ttl_seconds = settings.hold_ttl_default_seconds
    if not 1 <= quantity <= settings.max_item_quantity:
        raise InvalidInput(f"quantity must be between 1 and {settings.max_item_quantity}")
    if not settings.hold_ttl_min_seconds <= ttl_seconds <= settings.hold_ttl_max_seconds:
        raise InvalidInput(
            f"ttlSeconds must be between {settings.hold_ttl_min_seconds} "
            f"and {settings.hold_ttl_max_seconds}"
        )
    return HoldRequest(actor.user_id, product_id, quantity, timedelta(seconds=ttl_seconds))


_TAKE_AND_HOLD_ALONE = compile_query(_TAKE_AND_HOLD)


async def reserve_in_one_statement(reads: PooledReads, request: HoldRequest) -> Any | None:
    """The hold, if the product has the units now, taken and committed by one statement (the
    product's row lock lasts that statement only). None: nothing was written (no such
    product, too few units, a lost race), and `reserve_product` decides under its locks.
    The row has the columns of `reserve_product`'s, read by attribute."""
    async with stock.one_writer_per_product([request.product_id]):
        rows = await run_alone(
            reads, _TAKE_AND_HOLD_ALONE, **request.values(), **stock.correlation_parameter()
        )
    if not rows:
        return None
    row = dict(rows[0].items())
    row["status"] = ReservationStatus(row["status"])
    return SimpleNamespace(**row)


async def reserve_product(
    session: AsyncSession, request: HoldRequest, *, take_first: bool = True
) -> LightRow:
    """Hold the units of `request`; returns the HELD reservation. In a transaction retried on
    `RetryTransaction`, like every write (`db.transactions.run_in_transaction`). Not
    `take_first`: `reserve_in_one_statement` just found the hold not takeable at once, so the
    product is locked straight away (a hot product that sold out costs one round trip less)."""
    values = request.values()
    if take_first:
        held = (
            await session.execute(_TAKE_AND_HOLD, {**values, **stock.correlation_parameter()})
        ).first()
        if held is not None:
            return held
    product_id, quantity = request.product_id, request.quantity
    # No such product, or too few units: under the lock, reclaim lapsed holds or say which.
    locked = await stock.lock_products(session, [product_id])
    product = locked.get(product_id)
    if product is None:
        raise ProductNotFound(product_id)
    available = product.stock
    if available < quantity:
        available += (await stock.reclaim_expired_holds(session, [product_id])).get(product_id, 0)
        if available < quantity:
            raise InsufficientStock(product_id, requested=quantity, available=available)
    await stock.adjust(session, {product_id: -quantity})
    values["status"] = ReservationStatus.HELD
    return (await session.execute(_INSERT_HOLD, values)).one()


async def release_reservation(
    session: AsyncSession, actor: Actor, *, reservation_id: int
) -> LightRow:
    """End one of the actor's live holds early and give its stock back."""
    found = await session.execute(own_reservations(actor).where(Reservation.id == reservation_id))
    row = found.first()
    if row is None:
        raise ReservationNotFound(reservation_id)
    check_not_lapsed(row)
    await stock.lock_products(session, [row.product_id])
    released = await session.execute(
        update(Reservation)
        .where(Reservation.id == reservation_id, has_effective_status(ReservationStatus.HELD))
        .values(status=ReservationStatus.RELEASED, updated_at=func.now())
        .returning(*RESERVATION_COLUMNS)
        .execution_options(synchronize_session=False)
    )
    updated = released.first()
    if updated is None:
        # Someone else ended the hold between our read and our lock: say what they did.
        again = await session.execute(
            own_reservations(actor).where(Reservation.id == reservation_id)
        )
        check_not_lapsed(again.one())
        raise ReservationNotHeld(reservation_id, ReservationStatus.HELD.value)  # pragma: no cover
    await stock.adjust(session, {updated.product_id: updated.quantity})
    return updated


async def release_expired_holds(session: AsyncSession, *, limit: int) -> int:
    """Expire up to `limit` lapsed holds and give their stock back; returns how many this call
    expired (a concurrent sweeper or release may have won some of them: those are not counted,
    and their stock is not given back twice). Run it in a transaction; the worker does so
    every `hold_sweep_interval_seconds`."""
    candidates = await session.execute(
        select(Reservation.id, Reservation.product_id)
        .where(Reservation.status == ReservationStatus.HELD, Reservation.expires_at <= func.now())
        .order_by(Reservation.expires_at)
        .limit(limit)
    )
    rows = candidates.all()
    if not rows:
        return 0
    await stock.lock_products(session, {row.product_id for row in rows})
    which = equals_any(Reservation.id, [row.id for row in rows])
    return len(await stock.expire_lapsed_holds(session, which))


async def list_reservations(
    session: AsyncSession,
    actor: Actor,
    *,
    status: ReservationStatus | None,
    window: Window[int],
) -> Page[LightRow]:
    """The actor's own reservations (admins too list only theirs), newest first, filtered by
    the status a client sees (a lapsed hold counts as EXPIRED, not HELD, swept or not),
    within `window` (keyed by id)."""
    statement = own_reservations(actor)
    if status is not None:
        statement = statement.where(has_effective_status(status))
    if window.after is not None:
        statement = statement.where(Reservation.id < window.after)
    if window.before is not None:
        statement = statement.where(Reservation.id > window.before)
    # A backward page is read from the window's end, in reverse.
    order = Reservation.id.asc() if window.backward else Reservation.id.desc()
    statement = statement.order_by(order).limit(window.limit + 1)
    return page_from((await session.execute(statement)).all(), window)


async def count_reservations(
    session: AsyncSession, actor: Actor, *, status: ReservationStatus | None
) -> int:
    """How many reservations `list_reservations` would list in all: a `totalCount`."""
    statement = own_reservations(actor).with_only_columns(func.count(), maintain_column_froms=True)
    if status is not None:
        statement = statement.where(has_effective_status(status))
    return int((await session.execute(statement)).scalar_one())


async def readable_reservations_by_ids(
    session: AsyncSession, actor: Actor, ids: Sequence[int]
) -> dict[int, LightRow]:
    rows = await session.execute(
        readable_reservations(actor).where(equals_any(Reservation.id, ids))
    )
    return {row.id: row for row in rows}
