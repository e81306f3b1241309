"""Domain exceptions. Each has a stable `code`; the edge decides how a code is shown."""

from typing import ClassVar

from services.global_ids import to_global_id


class DomainError(Exception):
    """Base of every expected failure of a use case."""

    code = "DOMAIN_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(DomainError):
    """The caller sent something malformed or out of range."""

    code = "BAD_USER_INPUT"


class BusinessError(DomainError):
    """An expected outcome of a write use case that the client handles as data (a typed member
    of the mutation's payload union), not as an error. Raising it rolls the transaction back."""

    code = "BUSINESS_RULE"


class RowError(BusinessError):
    """A failure about one product, order or reservation: it keeps the row's id, and its
    message names the row first, by the global ID clients know it by ("order T3JkZXI6Nw
    ...")."""

    noun: ClassVar[str]

    def __init__(self, row_id: int, predicate: str) -> None:
        super().__init__(f"{self.noun} {to_global_id(self.noun.title(), row_id)} {predicate}")
        self.row_id = row_id


class NotFound(RowError):
    """No row has this id. An order or reservation of another user looks the same: its
    existence is not revealed."""

    def __init__(self, row_id: int) -> None:
        super().__init__(row_id, "does not exist")


class WrongStatus(RowError):
    """The row's status rules the use case out; `outcome` ends the message."""

    outcome: ClassVar[str]

    def __init__(self, row_id: int, status: str) -> None:
        super().__init__(row_id, f"is {status}{self.outcome}")
        self.status = status


class InsufficientStock(RowError):
    noun = "product"

    def __init__(self, product_id: int, *, requested: int, available: int) -> None:
        super().__init__(product_id, f"has {available} unit(s) available, {requested} requested")
        self.requested = requested
        self.available = available


class ProductNotFound(NotFound):
    noun = "product"


class CurrencyMismatch(BusinessError):
    def __init__(self, currencies: list[str]) -> None:
        super().__init__(
            "an order is paid in one currency; these products are priced in "
            + ", ".join(currencies)
        )
        self.currencies = currencies


class IdempotencyKeyReused(BusinessError):
    def __init__(self, key: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used for a different order; "
            "send a new key for a new order"
        )
        self.key = key


class OrderNotFound(NotFound):
    noun = "order"


class OrderNotCancellable(WrongStatus):
    noun = "order"
    outcome = " and cannot be cancelled"


class ReservationNotFound(NotFound):
    noun = "reservation"


class ReservationExpired(RowError):
    noun = "reservation"

    def __init__(self, reservation_id: int) -> None:
        super().__init__(reservation_id, "has expired; its stock was given back")


class ReservationNotHeld(WrongStatus):
    """The hold was already released or turned into an order."""

    noun = "reservation"
    outcome = ", no longer held"
