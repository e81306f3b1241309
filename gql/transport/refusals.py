"""A request turned away before GraphQL execution: what the endpoint answers it with, and the
rules both transports (HTTP, WebSocket) apply before a query text is parsed."""

from gql.errors import QUERY_TOO_COMPLEX


class Refused(Exception):
    """Answered with a GraphQL-shaped body of one error with `code`, at HTTP `status`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        request_error: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        # A GraphQL request error (like a parse or limit error): 400 for clients accepting
        # application/graphql-response+json, 200 with plain application/json.
        self.request_error = request_error


def check_query_size(query: str, limit: int) -> None:
    """Refuse a query text over `limit` (MAX_QUERY_BYTES) bytes before anything parses or
    caches it: the token limit bounds the parser's work, but not whitespace, and the caches
    (persisted queries, documents) are keyed by the whole text."""
    # UTF-8 takes 1 to 4 bytes a character: encode only when the length leaves a doubt.
    if len(query) > limit or (len(query) * 4 > limit and len(query.encode()) > limit):
        raise Refused(
            400, QUERY_TOO_COMPLEX, f"The query text exceeds {limit} bytes", request_error=True
        )
