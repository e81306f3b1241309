"""Mutation payloads: a union of the success type and the typed errors a client switches on
(`__typename`), and the one mapping from domain errors to those types."""

from typing import Annotated

import strawberry

from gql.schema.ids import to_global_id
from gql.schema.types.orders import Order
from gql.schema.types.reservations import Reservation
from services import errors


@strawberry.interface(description="An expected failure of a mutation, returned as data.")
class UserError:
    message: str


# Bases for the errors about one product, order or reservation: the ID field they share. The
# schema names none of them (no field returns one), so each error type still reads in the SDL
# with its own fields, in this order.
@strawberry.type
class _ProductError(UserError):
    product_id: strawberry.ID


@strawberry.type
class _OrderError(UserError):
    order_id: strawberry.ID


@strawberry.type
class _ReservationError(UserError):
    reservation_id: strawberry.ID


@strawberry.type(description="Fewer units are available than were asked for.")
class InsufficientStock(_ProductError):
    requested: int
    available: int


@strawberry.type(description="No product has this ID.")
class ProductNotFound(_ProductError):
    pass


@strawberry.type(description="The products are priced in different currencies.")
class CurrencyMismatch(UserError):
    currencies: list[str]


@strawberry.type(
    description="This idempotency key already placed an order with a different payload."
)
class IdempotencyKeyReused(UserError):
    idempotency_key: str


@strawberry.type(description="No order with this ID is visible to the viewer.")
class OrderNotFound(_OrderError):
    pass


@strawberry.type(description="The order is already cancelled.")
class OrderNotCancellable(_OrderError):
    status: str


@strawberry.type(description="No reservation with this ID is visible to the viewer.")
class ReservationNotFound(_ReservationError):
    pass


@strawberry.type(description="The hold passed its `expiresAt`; its stock was given back.")
class ReservationExpired(_ReservationError):
    pass


@strawberry.type(description="The hold was already released or turned into an order.")
class ReservationNotHeld(_ReservationError):
    status: str


@strawberry.type
class CreateOrderSuccess:
    order: Order
    created: bool = strawberry.field(
        description="False when an earlier request with the same idempotency key placed it."
    )


@strawberry.type
class CancelOrderSuccess:
    order: Order


@strawberry.type
class ReserveProductSuccess:
    reservation: Reservation


@strawberry.type
class ReleaseReservationSuccess:
    reservation: Reservation


CreateOrderPayload = Annotated[
    CreateOrderSuccess
    | InsufficientStock
    | ProductNotFound
    | CurrencyMismatch
    | IdempotencyKeyReused
    | ReservationNotFound
    | ReservationExpired
    | ReservationNotHeld,
    strawberry.union("CreateOrderPayload"),
]
CancelOrderPayload = Annotated[
    CancelOrderSuccess | OrderNotFound | OrderNotCancellable,
    strawberry.union("CancelOrderPayload"),
]
ReserveProductPayload = Annotated[
    ReserveProductSuccess | InsufficientStock | ProductNotFound,
    strawberry.union("ReserveProductPayload"),
]
ReleaseReservationPayload = Annotated[
    ReleaseReservationSuccess | ReservationNotFound | ReservationExpired | ReservationNotHeld,
    strawberry.union("ReleaseReservationPayload"),
]


def _gid(type_name: str, row_id: int) -> strawberry.ID:
    return strawberry.ID(to_global_id(type_name, row_id))


# One case per error type: a flat match reads better than a table of lambdas.
def user_error(error: errors.BusinessError) -> UserError:  # noqa: PLR0911
    """The typed GraphQL error for a domain error (the one place this mapping lives)."""
    match error:
        case errors.InsufficientStock():
            return InsufficientStock(
                message=error.message,
                product_id=_gid("Product", error.row_id),
                requested=error.requested,
                available=error.available,
            )
        case errors.ProductNotFound():
            return ProductNotFound(message=error.message, product_id=_gid("Product", error.row_id))
        case errors.CurrencyMismatch():
            return CurrencyMismatch(message=error.message, currencies=error.currencies)
        case errors.IdempotencyKeyReused():
            return IdempotencyKeyReused(message=error.message, idempotency_key=error.key)
        case errors.OrderNotFound():
            return OrderNotFound(message=error.message, order_id=_gid("Order", error.row_id))
        case errors.OrderNotCancellable():
            return OrderNotCancellable(
                message=error.message, order_id=_gid("Order", error.row_id), status=error.status
            )
        case errors.ReservationNotFound():
            return ReservationNotFound(
                message=error.message, reservation_id=_gid("Reservation", error.row_id)
            )
        case errors.ReservationExpired():
            return ReservationExpired(
                message=error.message, reservation_id=_gid("Reservation", error.row_id)
            )
        case errors.ReservationNotHeld():
            return ReservationNotHeld(
                message=error.message,
                reservation_id=_gid("Reservation", error.row_id),
                status=error.status,
            )
    raise error
