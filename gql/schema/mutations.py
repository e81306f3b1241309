"""The Mutation root: each top-level field is its own transaction on the request's session,
committed or rolled back alone, so one failing field neither undoes nor poisons the others."""

from collections.abc import Awaitable, Callable
from typing import TypeVar

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession

from core.settings import Settings
from db.reads import PooledReads
from db.transactions import run_in_transaction
from gql.schema.context import Context, Info
from gql.schema.ids import row_id_of
from gql.schema.types.orders import Order, OrderItem
from gql.schema.types.payloads import (
    CancelOrderPayload,
    CancelOrderSuccess,
    CreateOrderPayload,
    CreateOrderSuccess,
    ReleaseReservationPayload,
    ReleaseReservationSuccess,
    ReserveProductPayload,
    ReserveProductSuccess,
    user_error,
)
from gql.schema.types.reservations import Reservation
from services import checkout, reservations
from services.errors import BusinessError

ResultT = TypeVar("ResultT")


async def in_own_transaction(
    context: Context, work: Callable[[AsyncSession], Awaitable[ResultT]]
) -> ResultT:
    """Run `work` in a transaction of its own, retried on deadlock or serialization failure."""
    async with context.session_turn() as session:
        if session.in_transaction():
            # The read path (the viewer's lookup, loaders) autobegan a read-only transaction:
            # end it so that this field's writes commit or roll back on their own.
            await session.commit()
        try:
            return await run_in_transaction(
                session, work, attempts=context.settings.db_transaction_attempts
            )
        finally:
            # Rows loaded before the write may be stale now (a product's stock…).
            context.forget_loaded()


async def in_one_statement_or_transaction(
    context: Context,
    alone: Callable[[PooledReads], Awaitable[ResultT | None]],
    work: Callable[[AsyncSession, bool], Awaitable[ResultT]],
) -> ResultT:
    """A write that one statement can make whole in its common case (DB_ONE_STATEMENT_WRITES):
    `alone`'s statement, committed on its own on the request's pooled connection; when it
    wrote nothing (None: its case needs the transaction's rules) or could not run (the setting
    is off, no pooled connection, the session inside a transaction), `work` in a transaction
    of its own, told whether `alone` ran and declined (so it need not send that statement
    again)."""
    declined = False
    if context.settings.db_one_statement_writes:
        async with context.read_turn() as reader:
            if isinstance(reader, PooledReads):
                result = await alone(reader)
                if result is not None:
                    context.forget_loaded()  # as after a transaction: loaded rows may be stale
                    return result
                declined = True
    return await in_own_transaction(context, lambda session: work(session, declined))


@strawberry.input
class OrderItemInput:
    product_id: strawberry.ID
    quantity: int


@strawberry.input(
    description="Items to take from stock now and/or the viewer's HELD reservations to check "
    "out (each becomes an order item at the product's current price). Sending the same "
    "`idempotencyKey` again returns the first order; with a different payload it is "
    "`IdempotencyKeyReused`."
)
class CreateOrderInput:
    items: list[OrderItemInput] = strawberry.field(default_factory=list)
    idempotency_key: str
    reservation_ids: list[strawberry.ID] | None = None

    def to_request(self, settings: Settings) -> checkout.OrderRequest:
        # The lists are bounded before any ID is decoded, so a huge list costs nothing.
        checkout.check_list_sizes(
            items=len(self.items),
            reservations=len(self.reservation_ids or ()),
            settings=settings,
        )
        return checkout.OrderRequest(
            lines=tuple(
                checkout.OrderLine(
                    product_id=row_id_of(item.product_id, "Product"), quantity=item.quantity
                )
                for item in self.items
            ),
            idempotency_key=self.idempotency_key,
            reservation_ids=tuple(
                row_id_of(reservation_id, "Reservation")
                for reservation_id in self.reservation_ids or ()
            ),
        )


@strawberry.input
class ReserveProductInput:
    product_id: strawberry.ID
    quantity: int
    ttl_seconds: int | None = strawberry.field(
        default=None,
        description="Seconds the hold lasts (null or absent: the service's default).",
    )


def _order(result: checkout.OrderResult) -> Order:
    order = Order.from_row(result.order)
    order.prefetched_items = [OrderItem.from_row(item, order.currency) for item in result.items]
    return order


@strawberry.type(
    description="Each field commits or rolls back on its own. Payloads are nullable on purpose: "
    "when a later field fails with an error (bad input, authentication), only that field is "
    "null and the results of the fields before it, already committed, stay visible."
)
class Mutation:
    @strawberry.mutation(  # type: ignore[untyped-decorator]
        description="Place an order: stock is taken under row locks, all or nothing."
    )
    async def create_order(self, info: Info, input: CreateOrderInput) -> CreateOrderPayload | None:
        context = info.context
        actor = context.require_viewer()
        settings = context.settings
        request = input.to_request(settings)
        try:
            result = await in_one_statement_or_transaction(
                context,
                lambda reads: checkout.create_order_in_one_statement(
                    reads, actor, request, settings=settings
                ),
                # A declined statement locked and wrote nothing: the transaction starts over.
                lambda session, _declined: checkout.create_order(
                    session, actor, request, settings=settings
                ),
            )
        except BusinessError as error:
            return user_error(error)  # type: ignore[return-value]
        return CreateOrderSuccess(order=_order(result), created=result.created)

    @strawberry.mutation(description="Cancel one of the viewer's orders; its stock comes back.")  # type: ignore[untyped-decorator]
    async def cancel_order(self, info: Info, id: strawberry.ID) -> CancelOrderPayload | None:
        context = info.context
        actor = context.require_viewer()
        order_id = row_id_of(id, "Order")
        try:
            result = await in_own_transaction(
                context, lambda s: checkout.cancel_order(s, actor, order_id=order_id)
            )
        except BusinessError as error:
            return user_error(error)  # type: ignore[return-value]
        return CancelOrderSuccess(order=_order(result))

    @strawberry.mutation(description="Hold units of a product for `ttlSeconds`.")  # type: ignore[untyped-decorator]
    async def reserve_product(
        self, info: Info, input: ReserveProductInput
    ) -> ReserveProductPayload | None:
        context = info.context
        actor = context.require_viewer()
        try:
            request = reservations.hold_request(
                actor,
                product_id=row_id_of(input.product_id, "Product"),
                quantity=input.quantity,
                ttl_seconds=input.ttl_seconds,
                settings=context.settings,
            )
            row = await in_one_statement_or_transaction(
                context,
                lambda reads: reservations.reserve_in_one_statement(reads, request),
                lambda session, declined: reservations.reserve_product(
                    session, request, take_first=not declined
                ),
            )
        except BusinessError as error:
            return user_error(error)  # type: ignore[return-value]
        return ReserveProductSuccess(reservation=Reservation.from_row(row))

    @strawberry.mutation(description="End a hold early; its stock comes back.")  # type: ignore[untyped-decorator]
    async def release_reservation(
        self, info: Info, id: strawberry.ID
    ) -> ReleaseReservationPayload | None:
        context = info.context
        actor = context.require_viewer()
        reservation_id = row_id_of(id, "Reservation")
        try:
            row = await in_own_transaction(
                context,
                lambda s: reservations.release_reservation(s, actor, reservation_id=reservation_id),
            )
        except BusinessError as error:
            return user_error(error)  # type: ignore[return-value]
        return ReleaseReservationSuccess(reservation=Reservation.from_row(row))
