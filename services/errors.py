"""Domain exceptions. Each has a stable `code`; the edge decides how a code is shown."""


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


class InsufficientStock(BusinessError):
    def __init__(self, product_id: int, *, requested: int, available: int) -> None:
        super().__init__(
            f"product {product_id} has {available} unit(s) available, {requested} requested"
        )
        self.product_id = product_id
        self.requested = requested
        self.available = available


class ProductNotFound(BusinessError):
    def __init__(self, product_id: int) -> None:
        super().__init__(f"product {product_id} does not exist")
        self.product_id = product_id


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


class OrderNotFound(BusinessError):
    """Also what another user's order looks like: its existence is not revealed."""

    def __init__(self, order_id: int) -> None:
        super().__init__(f"order {order_id} does not exist")
        self.order_id = order_id


class OrderNotCancellable(BusinessError):
    def __init__(self, order_id: int, status: str) -> None:
        super().__init__(f"order {order_id} is {status} and cannot be cancelled")
        self.order_id = order_id
        self.status = status


class ReservationNotFound(BusinessError):
    """Also what another user's reservation looks like."""

    def __init__(self, reservation_id: int) -> None:
        super().__init__(f"reservation {reservation_id} does not exist")
        self.reservation_id = reservation_id


class ReservationExpired(BusinessError):
    def __init__(self, reservation_id: int) -> None:
        super().__init__(f"reservation {reservation_id} has expired; its stock was given back")
        self.reservation_id = reservation_id


class ReservationNotHeld(BusinessError):
    """The hold was already released or turned into an order."""

    def __init__(self, reservation_id: int, status: str) -> None:
        super().__init__(f"reservation {reservation_id} is {status}, no longer held")
        self.reservation_id = reservation_id
        self.status = status
