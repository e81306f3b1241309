"""A request turned away before GraphQL execution: what the endpoint answers it with."""


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
