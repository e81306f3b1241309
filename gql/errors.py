"""From exceptions to GraphQL errors with a stable `extensions.code`; everything unexpected is
masked as INTERNAL_SERVER_ERROR and logged once with its stack."""

import logging
from typing import Any

from asyncpg.exceptions import DataError as PostgresDataError
from asyncpg.exceptions._base import DataError as DriverDataError
from graphql import GraphQLError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from core.correlation import current_correlation_id
from services.errors import DomainError

logger = logging.getLogger("gql.errors")

INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"
GRAPHQL_VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
GRAPHQL_PARSE_FAILED = "GRAPHQL_PARSE_FAILED"
BAD_USER_INPUT = "BAD_USER_INPUT"
BAD_REQUEST = "BAD_REQUEST"
UNAUTHENTICATED = "UNAUTHENTICATED"
NOT_FOUND = "NOT_FOUND"
RATE_LIMITED = "RATE_LIMITED"
QUERY_TOO_COMPLEX = "QUERY_TOO_COMPLEX"
PERSISTED_QUERY_NOT_FOUND = "PERSISTED_QUERY_NOT_FOUND"
PERSISTED_QUERY_NOT_ALLOWED = "PERSISTED_QUERY_NOT_ALLOWED"
SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
REQUEST_TOO_LARGE = "REQUEST_TOO_LARGE"

UNAVAILABLE_MESSAGE = "A service this request needs is unavailable; retry later"
MALFORMED_VALUE_MESSAGE = "a value is malformed or out of range"


class ApiError(GraphQLError):
    """An error raised on purpose by the GraphQL layer, shown to the client as it is."""

    code = "BAD_REQUEST"

    def __init__(self, message: str, **extensions: Any) -> None:
        super().__init__(message, extensions={"code": self.code, **extensions})


class Unauthenticated(ApiError):
    code = UNAUTHENTICATED


class BadUserInput(ApiError):
    code = BAD_USER_INPUT


class RequestFinished(ApiError):
    """Raised to a resolver that asks for the database after its request has closed the
    session: its operation ended early (a sibling failed) and its result has no reader."""

    code = INTERNAL_SERVER_ERROR

    def __init__(self) -> None:
        super().__init__("the request has already finished")


def is_expected(error: GraphQLError) -> bool:
    original = error.original_error
    return (
        original is None
        or isinstance(original, (DomainError, GraphQLError))
        or malformed_value(original) is not None
    )


def malformed_value(error: BaseException) -> BaseException | None:
    """The driver's or PostgreSQL's verdict that a value sent is malformed or out of range,
    when that is what `error` is (or wraps): a NUL in text, a number beyond its column, an
    integer beyond int64. Input no check of ours caught, not a bug, so the client is told
    (BAD_USER_INPUT) and it is logged as a warning without a stack: the backstop behind the
    input checks, which give clearer messages."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # Class 22 (data exception) from the server; the driver's own encoding failure
        # ("invalid input for query argument"), which SQLAlchemy wraps as an InterfaceError.
        if isinstance(current, (PostgresDataError, DriverDataError)):
            rejected: BaseException = current
            return rejected
        # Explicit wrapping only (SQLAlchemy's `orig`, `raise … from`): an error raised while
        # another was handled (`__context__`) is not that error.
        if isinstance(current, DBAPIError) and current.orig is not None:
            current = current.orig
        else:
            current = current.__cause__
    return None


def with_code(error: GraphQLError) -> GraphQLError:
    """The error as the client should see it."""
    original = error.original_error
    if isinstance(original, DomainError):
        code = original.code
        message = original.message
    elif isinstance(original, GraphQLError):
        code = (original.extensions or {}).get("code") or BAD_USER_INPUT
        message = error.message
    elif original is None:
        code = (error.extensions or {}).get("code") or _code_of_request_error(error)
        message = error.message
    elif malformed_value(original) is not None:
        code = BAD_USER_INPUT
        message = MALFORMED_VALUE_MESSAGE
    elif is_unavailable(original):
        # Still unexpected (logged with its stack), but the client learns a retry may work.
        code = SERVICE_UNAVAILABLE
        message = UNAVAILABLE_MESSAGE
    else:
        code = INTERNAL_SERVER_ERROR
        message = "Internal server error"
    extensions = {**(error.extensions or {}), "code": code}
    correlation_id = current_correlation_id()
    if correlation_id is not None:
        extensions["correlationId"] = correlation_id
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions=extensions,
    )


def is_unavailable(error: BaseException) -> bool:
    """A dependency is down or saturated (worth a retry), rather than a bug."""
    if isinstance(error, (PoolTimeoutError, ConnectionError, TimeoutError)):
        return True
    if malformed_value(error) is not None:
        return False  # the driver's encoding failure is an InterfaceError too
    if isinstance(error, DBAPIError):
        return error.connection_invalidated or isinstance(error, (OperationalError, InterfaceError))
    return False


def _code_of_request_error(error: GraphQLError) -> str:
    """Errors of syntax, validation and variable coercion carry no original error."""
    if error.message.startswith("Syntax Error"):
        # The parser's own token limit (set from MAX_QUERY_TOKENS) speaks as a syntax error.
        if "Parsing aborted" in error.message:
            return QUERY_TOO_COMPLEX
        return GRAPHQL_PARSE_FAILED
    if error.message == "Maximum introspection depth exceeded":  # graphql-core's own rule
        return QUERY_TOO_COMPLEX
    if error.message.startswith("Variable '$"):
        return BAD_USER_INPUT
    return GRAPHQL_VALIDATION_FAILED


def log_unexpected(errors: list[GraphQLError]) -> None:
    """The one place an unexpected error's stack is logged (the log line carries the
    correlation ID the client was given)."""
    for error in errors:
        original = error.original_error
        rejected = None if original is None else malformed_value(original)
        if rejected is not None:
            log_malformed_value(rejected, ".".join(str(p) for p in error.path or ()))
        elif not is_expected(error):
            assert original is not None
            logger.error(
                "unexpected error in %s",
                ".".join(str(p) for p in error.path or ()) or "the operation",
                exc_info=(type(original), original, original.__traceback__),
            )


def log_malformed_value(rejected: BaseException, where: str) -> None:
    """One warning line, no stack: the driver's or database's words say what was wrong."""
    detail = str(rejected).splitlines()[0][:200] if str(rejected) else ""
    logger.warning(
        "malformed value in %s: %s: %s",
        where or "the operation",
        type(rejected).__name__,
        detail,
    )


def error_body(code: str, message: str) -> dict[str, Any]:
    """A GraphQL-shaped body for a request refused or failed outside GraphQL execution."""
    extensions: dict[str, Any] = {"code": code}
    correlation_id = current_correlation_id()
    if correlation_id is not None:
        extensions["correlationId"] = correlation_id
    return {"errors": [{"message": message, "extensions": extensions}]}


def with_codes(errors: list[GraphQLError] | None) -> list[GraphQLError] | None:
    """Every error of a result as the client should see it (applied where results become
    HTTP responses: Strawberry skips extension hooks for errors raised before execution)."""
    return [with_code(error) for error in errors] if errors else errors
