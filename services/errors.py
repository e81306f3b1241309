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


class NotAuthenticated(DomainError):
    code = "UNAUTHENTICATED"


class NotAllowed(DomainError):
    code = "FORBIDDEN"


class NotFound(DomainError):
    code = "NOT_FOUND"
