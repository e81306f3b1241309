"""Holds on stock: reserving takes stock for a while; releasing, expiring or checking out ends
the hold. Whoever moves a hold out of HELD (one conditional UPDATE) is the one who acts on its
stock, so it comes back exactly once however many releases and sweepers race for it."""

from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.settings import Settings
from db.arrays import equals_any
from db.models import Reservation, ReservationStatus
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
from services.pagination import Page, page_from

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


def readable_reservations(actor: Actor) -> LightSelect:
    """Every read of reservations starts here: a user sees their own, an admin sees all. The
    `lapsed` column says whether a HELD row is past its deadline, by the database's clock."""
    statement = select(
        *RESERVATION_COLUMNS,
        (Reservation.expires_at <= func.now()).label("lapsed"),
    )
    if not actor.is_admin:
        statement = statement.where(Reservation.user_id == actor.user_id)
    return statement


def check_not_lapsed(row: LightRow) -> None:
    """A hold can be released or checked out only while HELD and before its deadline."""
    if row.status is ReservationStatus.EXPIRED or (
        row.status is ReservationStatus.HELD and row.lapsed
    ):
        raise ReservationExpired(row.id)
    if row.status is not ReservationStatus.HELD:
        raise ReservationNotHeld(row.id, row.status.value)


async def reserve_product(
    session: AsyncSession,
    actor: Actor,
    *,
    product_id: int,
    quantity: int,
    ttl_seconds: int,
    settings: Settings,
) -> LightRow:
    """Take `quantity` units of a product for `ttl_seconds`; returns the HELD reservation."""
    if not 1 <= quantity <= settings.max_item_quantity:
        raise InvalidInput(f"quantity must be between 1 and {settings.max_item_quantity}")
    if not settings.hold_ttl_min_seconds <= ttl_seconds <= settings.hold_ttl_max_seconds:
        raise InvalidInput(
            f"ttlSeconds must be between {settings.hold_ttl_min_seconds} "
            f"and {settings.hold_ttl_max_seconds}"
        )
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
    created = await session.execute(
        insert(Reservation)
        .values(
            user_id=actor.user_id,
            product_id=product_id,
            quantity=quantity,
            status=ReservationStatus.HELD,
            expires_at=func.now() + timedelta(seconds=ttl_seconds),
        )
        .returning(*RESERVATION_COLUMNS)
    )
    return created.one()


async def release_reservation(
    session: AsyncSession, actor: Actor, *, reservation_id: int
) -> LightRow:
    """End a live hold early and give its stock back."""
    found = await session.execute(
        readable_reservations(actor).where(Reservation.id == reservation_id)
    )
    row = found.first()
    if row is None:
        raise ReservationNotFound(reservation_id)
    check_not_lapsed(row)
    await stock.lock_products(session, [row.product_id])
    released = await session.execute(
        update(Reservation)
        .where(
            Reservation.id == reservation_id,
            Reservation.status == ReservationStatus.HELD,
            Reservation.expires_at > func.now(),
        )
        .values(status=ReservationStatus.RELEASED, updated_at=func.now())
        .returning(*RESERVATION_COLUMNS)
        .execution_options(synchronize_session=False)
    )
    updated = released.first()
    if updated is None:
        # Someone else ended the hold between our read and our lock: say what they did.
        again = await session.execute(
            readable_reservations(actor).where(Reservation.id == reservation_id)
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
    expired = await session.execute(
        update(Reservation)
        .where(
            equals_any(Reservation.id, [row.id for row in rows]),
            Reservation.status == ReservationStatus.HELD,
            Reservation.expires_at <= func.now(),
        )
        .values(status=ReservationStatus.EXPIRED, updated_at=func.now())
        .returning(Reservation.product_id, Reservation.quantity)
        .execution_options(synchronize_session=False)
    )
    returned: dict[int, int] = defaultdict(int)
    count = 0
    for row in expired:
        returned[row.product_id] += row.quantity
        count += 1
    await stock.adjust(session, returned)
    return count


async def list_reservations(
    session: AsyncSession,
    actor: Actor,
    *,
    status: ReservationStatus | None,
    after_id: int | None,
    limit: int,
) -> Page[LightRow]:
    """The actor's own reservations, newest first. A lapsed hold counts as EXPIRED, not HELD,
    whether or not the sweeper has reached it yet."""
    statement = readable_reservations(actor).where(Reservation.user_id == actor.user_id)
    if status is ReservationStatus.HELD:
        statement = statement.where(
            Reservation.status == ReservationStatus.HELD, Reservation.expires_at > func.now()
        )
    elif status is ReservationStatus.EXPIRED:
        statement = statement.where(
            (Reservation.status == ReservationStatus.EXPIRED)
            | (
                (Reservation.status == ReservationStatus.HELD)
                & (Reservation.expires_at <= func.now())
            )
        )
    elif status is not None:
        statement = statement.where(Reservation.status == status)
    if after_id is not None:
        statement = statement.where(Reservation.id < after_id)
    statement = statement.order_by(Reservation.id.desc()).limit(limit + 1)
    return page_from((await session.execute(statement)).all(), limit)


async def readable_reservations_by_ids(
    session: AsyncSession, actor: Actor, ids: Sequence[int]
) -> dict[int, LightRow]:
    rows = await session.execute(
        readable_reservations(actor).where(equals_any(Reservation.id, ids))
    )
    return {row.id: row for row in rows}
