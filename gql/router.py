"""The GraphQL route: Strawberry's router with orjson, stable error codes, the
GraphQL-over-HTTP status codes and media type, persisted queries, and rate limits checked
after authentication and before anything is parsed or executed."""

from collections import Counter
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any

import orjson
from cross_web import AsyncHTTPRequestAdapter, HTTPException
from fastapi import Request, Response
from fastapi.responses import HTMLResponse
from graphql import ExecutionResult as GraphQLExecutionResult
from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    parse,
)
from strawberry.fastapi import GraphQLRouter
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData, process_result
from strawberry.http.base import BaseRequestProtocol
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.types import ExecutionResult
from strawberry.types.execution import PreExecutionError
from strawberry.types.unset import UNSET

from core.settings import Settings
from gql.apq import PersistedQueries, is_sha256, sha256_of
from gql.context import Context
from gql.deps import authenticate
from gql.errors import (
    BAD_REQUEST,
    NOT_FOUND,
    PERSISTED_QUERY_NOT_ALLOWED,
    PERSISTED_QUERY_NOT_FOUND,
    QUERY_TOO_COMPLEX,
    RATE_LIMITED,
    SERVICE_UNAVAILABLE,
    error_body,
    with_codes,
)
from gql.graphiql import graphiql_html
from gql.metrics import ERRORS
from gql.prepared import PreparedOperations
from gql.ratelimit import RateLimiter, RateLimitUnavailable, client_ip
from services.auth import Actor, ActorCache

GRAPHQL_PATH = "/graphql"
GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
JSON = "application/json"


class Refused(Exception):
    """A request turned away before GraphQL execution, answered with a GraphQL-shaped body."""

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


@dataclass
class RegisteringRequestData(GraphQLRequestData):
    """A request that sent a persisted query's hash and text: the text is stored under the
    hash only once the request has passed the rate limits and the document has parsed and
    validated, so a refused or invalid request leaves nothing behind."""

    register_as: str = ""


@dataclass
class Edge:
    """What the route needs besides the schema, made once per app."""

    settings: Settings
    rate_limiter: RateLimiter
    persisted_queries: PersistedQueries
    limited_fields: frozenset[str] = field(init=False)

    prepared: PreparedOperations = field(init=False)
    actors: ActorCache = field(init=False)

    def __post_init__(self) -> None:
        self.limited_fields = frozenset(self.rate_limiter.limited_fields())
        self.prepared = PreparedOperations(self.settings.max_query_tokens)
        self.actors = ActorCache(self.settings.auth_cache_seconds)

    async def check_rate_limits(
        self,
        viewer: Actor | None,
        peer: str | None,
        forwarded_for: list[str],
        operations: list[tuple[str, str | None]],
    ) -> None:
        """Count the request against the caller's limits (the user's, else the client
        address's) and each limited root field of `operations` ((query, operation name)
        pairs); raise Refused when a limit is reached."""
        limiter = self.rate_limiter
        if not limiter.enabled:
            return
        if viewer is not None:
            caller = f"user:{viewer.user_id}"
        else:
            caller = "ip:" + client_ip(peer, forwarded_for, self.settings.trusted_proxies)
        fields: Counter[str] = Counter()
        for query, operation_name in operations:
            # Cheap filter first: most operations name no field with a limit of its own.
            if any(name in query for name in self.limited_fields):
                fields.update(
                    dict(root_fields(query, operation_name, self.settings.max_query_tokens))
                )
        try:
            refusal = await limiter.check(caller, fields)
        except RateLimitUnavailable:
            raise Refused(
                503,
                SERVICE_UNAVAILABLE,
                "Rate limits cannot be checked; retry later",
                {"Retry-After": "1"},
            ) from None
        if refusal is not None:
            what = "requests" if refusal.limit == "request" else f"`{refusal.limit}`"
            raise Refused(
                429,
                RATE_LIMITED,
                f"Too many {what}; retry in {refusal.retry_after}s",
                {"Retry-After": str(refusal.retry_after)},
            )


class FastJSONGraphQLRouter(GraphQLRouter[object, None]):
    """Strawberry's router with orjson on the hot paths of every request, and every error
    given its stable code."""

    def __init__(self, *args: Any, edge: Edge, path: str = GRAPHQL_PATH, **kwargs: Any) -> None:
        super().__init__(*args, path=path, **kwargs)
        self.edge = edge
        # Without this route, FastAPI's routing answers other methods itself, in its own shape
        # (`{"detail": …}`, no code, no correlation ID).
        self.add_api_route(
            path,
            self._method_not_allowed,
            methods=["PUT", "PATCH", "DELETE", "OPTIONS"],
            include_in_schema=False,
        )

    async def _method_not_allowed(self, request: Request) -> Response:
        return self._refusal(request, method_not_allowed(request.method))

    async def run(self, request: Any, context: Any = UNSET, root_value: Any = UNSET) -> Any:
        try:
            response = await self._run_and_release(request, context, root_value)
        except Refused as refused:
            return self._refusal(request, refused)
        except HTTPException as error:
            # Strawberry answers these in plain text; clients get the same shape as any error.
            if error.status_code == 405 or isinstance(error.__cause__, InvalidOperationTypeError):
                # GraphQL over HTTP: a mutation over GET is a 405, like a method we do not serve.
                return self._refusal(request, method_not_allowed(request.method, error.reason))
            code = NOT_FOUND if error.status_code == 404 else BAD_REQUEST
            return self._refusal(request, Refused(error.status_code, code, error.reason))
        if (
            isinstance(response, Response)
            and response.media_type == JSON
            and prefers_graphql_response_json(request.headers.get("accept"))
        ):
            response.headers["content-type"] = GRAPHQL_RESPONSE_JSON
            # GraphQL over HTTP: a request that failed before execution (no `data`) is a
            # client error; with plain application/json it stays 200 for old clients.
            if getattr(request.state, "graphql_request_error", False):
                response.status_code = 400
        return response

    async def _run_and_release(self, request: Any, context: Any, root_value: Any) -> Any:
        try:
            return await super().run(request, context=context, root_value=root_value)
        finally:
            # Give the connection back to the pool as soon as the operation is done, not after
            # the response has been written to the client: under load, requests otherwise
            # queue for connections held idle.
            if isinstance(context, Context):
                await context.close()

    def _refusal(self, request: Request, refused: Refused) -> Response:
        status, media_type, body = refusal_response(refused, request.headers.get("accept"))
        return Response(body, status_code=status, media_type=media_type, headers=refused.headers)

    def should_render_graphql_ide(self, request: BaseRequestProtocol) -> bool:
        params = request.query_params
        if request.method == "GET" and "extensions" in params and "query" not in params:
            # Only a persisted query's hash: an API client, not a browser.
            return False
        # A browser opening a shared link (`/graphql?query=…`) gets GraphiQL with the query in
        # its editor; API clients (no text/html in Accept) still get the result of a GET.
        return super().should_render_graphql_ide(request) or (
            self.graphql_ide is not None
            and request.method == "GET"
            and "text/html" in request.headers.get("accept", "")
        )

    async def render_graphql_ide(self, request: Request) -> HTMLResponse:
        # Strawberry's page loads GraphiQL from a CDN; ours from this server (gql.graphiql).
        return HTMLResponse(graphiql_html())

    def parse_json(self, data: str | bytes) -> Any:
        parsed = super().parse_json(data)
        # Strawberry reads a request (or each of a batch) as an object and fails on anything
        # else with an AttributeError, which would be a 500.
        items = parsed if isinstance(parsed, list) else [parsed]
        if not all(isinstance(item, dict) for item in items):
            raise HTTPException(400, "The request body must be a JSON object (a GraphQL request)")
        return parsed

    async def parse_http_body(
        self, request: AsyncHTTPRequestAdapter
    ) -> GraphQLRequestData | list[GraphQLRequestData]:
        data = await super().parse_http_body(request)
        if isinstance(data, list):
            return [await self._resolve_persisted(item) for item in data]
        return await self._resolve_persisted(data)

    async def _resolve_persisted(self, data: GraphQLRequestData) -> GraphQLRequestData:
        """Apollo APQ: the hash alone runs a known query; hash and query register it (once
        the request has run, see `_register_validated`)."""
        if data.query is not None:
            self._check_query_size(data.query)
        store = self.edge.persisted_queries
        persisted = (data.extensions or {}).get("persistedQuery")
        if persisted is None:
            if store.allow_list is not None:
                raise Refused(
                    400, PERSISTED_QUERY_NOT_ALLOWED, "Only persisted queries may run here"
                )
            return data
        sha = persisted.get("sha256Hash") if isinstance(persisted, dict) else None
        if not isinstance(persisted, dict) or persisted.get("version") != 1 or not is_sha256(sha):
            raise Refused(
                400, BAD_REQUEST, "Unsupported persisted query: use version 1 and a sha256Hash"
            )
        assert isinstance(sha, str)
        if data.query is None:
            query = await store.get(sha)
            if query is None:
                # Apollo clients resend the full query on this message and code; 200 as
                # Apollo's servers answer, since nothing is wrong with the request.
                raise Refused(200, PERSISTED_QUERY_NOT_FOUND, "PersistedQueryNotFound")
            data.query = query
            return data
        if sha256_of(data.query) != sha:
            raise Refused(400, BAD_REQUEST, "provided sha does not match query")
        if store.allow_list is not None:
            if sha not in store.allow_list:
                raise Refused(400, PERSISTED_QUERY_NOT_ALLOWED, "This query is not allowed here")
            return data
        values = {f.name: getattr(data, f.name) for f in fields(GraphQLRequestData)}
        return RegisteringRequestData(**values, register_as=sha)

    def _check_query_size(self, query: str) -> None:
        """Refuse a query text over MAX_QUERY_BYTES before anything parses or caches it: the
        token limit bounds the parser's work, but not whitespace, and the caches (persisted
        queries, parsed documents, validation, root fields) are keyed by the whole text."""
        limit = self.edge.settings.max_query_bytes
        # UTF-8 takes 1 to 4 bytes a character: encode only when the length leaves a doubt.
        if len(query) > limit or (len(query) * 4 > limit and len(query.encode()) > limit):
            raise Refused(
                400,
                QUERY_TOO_COMPLEX,
                f"The query text exceeds {limit} bytes",
                request_error=True,
            )

    async def _register_validated(
        self,
        request_data: GraphQLRequestData | list[GraphQLRequestData],
        result: object,
    ) -> None:
        items = request_data if isinstance(request_data, list) else [request_data]
        results = result if isinstance(result, list) else [result]
        for data, outcome in zip(items, results, strict=False):
            if data.query is None or isinstance(outcome, PreExecutionError):
                continue
            if getattr(outcome, "data", None) is not None:
                # It parsed, validated and ran: the fast lane may run it from now on.
                self.edge.prepared.remember(data.query, data.operation_name)
            if isinstance(data, RegisteringRequestData):
                await self.edge.persisted_queries.put(data.register_as, data.query)

    async def execute_operation(  # noqa: PLR0917
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        request_data: GraphQLRequestData | list[GraphQLRequestData],
        context: Any,
        root_value: Any,
        sub_response: Response,
    ) -> Any:
        # The viewer is looked up only now that the body has been read: a connection checked
        # out before would wait on a slow client.
        await authenticate(context, request.headers.get("authorization"), self.edge.actors)
        await self._check_rate_limits(request, request_data, context)
        result = await super().execute_operation(
            request, request_adapter, request_data, context, root_value, sub_response
        )
        await self._register_validated(request_data, result)
        return result

    async def _check_rate_limits(
        self,
        request: Request,
        request_data: GraphQLRequestData | list[GraphQLRequestData],
        context: Any,
    ) -> None:
        items = request_data if isinstance(request_data, list) else [request_data]
        await self.edge.check_rate_limits(
            getattr(context, "viewer", None),
            request.client.host if request.client else None,
            request.headers.getlist("x-forwarded-for"),
            [(item.query or "", item.operation_name) for item in items],
        )

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        response = response_data(result)
        if isinstance(result, PreExecutionError):
            # A request error (parse, validation, limits): the spec says no `data` at all.
            response.pop("data", None)
            request.state.graphql_request_error = True
        return response

    def encode_json(self, data: object) -> bytes:
        return orjson.dumps(data)

    def decode_json(self, data: str | bytes) -> object:
        return orjson.loads(data)


def method_not_allowed(method: str, reason: str | None = None) -> Refused:
    return Refused(
        405,
        BAD_REQUEST,
        reason or f"{method} is not served here: send a GraphQL request with GET or POST",
        {"Allow": "GET, POST"},
    )


def response_data(result: ExecutionResult | GraphQLExecutionResult) -> GraphQLHTTPResponse:
    """The response body of a result: every error with its stable code, and counted."""
    result.errors = with_codes(result.errors)
    if result.errors:
        for error in result.errors:
            ERRORS.labels((error.extensions or {}).get("code", "UNKNOWN")).inc()
    return process_result(result)  # type: ignore[arg-type]


def refusal_response(refused: Refused, accept: str | None) -> tuple[int, str, bytes]:
    """Status, media type and body answering a request turned away before execution."""
    ERRORS.labels(refused.code).inc()
    wants_new = prefers_graphql_response_json(accept)
    status = refused.status
    if refused.request_error:
        status = 400 if wants_new else 200
    media_type = GRAPHQL_RESPONSE_JSON if wants_new else JSON
    return status, media_type, orjson.dumps(error_body(refused.code, refused.message))


def prefers_graphql_response_json(accept: str | None) -> bool:
    """Whether the client asked for application/graphql-response+json at least as much as for
    application/json (without an Accept header, the spec says: treat it as application/json)."""
    if not accept or GRAPHQL_RESPONSE_JSON not in accept:
        return False
    quality = {GRAPHQL_RESPONSE_JSON: 0.0, JSON: 0.0}
    for part in accept.split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        if media in quality:
            q = 1.0
            for param in params:
                key, _, value = param.partition("=")
                if key.strip() == "q":
                    try:
                        q = float(value)
                    except ValueError:
                        q = 0.0
            quality[media] = q
    return quality[GRAPHQL_RESPONSE_JSON] > 0 and quality[GRAPHQL_RESPONSE_JSON] >= quality[JSON]


@lru_cache(maxsize=1000)
def root_fields(
    query: str, operation_name: str | None, max_tokens: int
) -> tuple[tuple[str, int], ...]:
    """How many times each root field occurs in the operation that will run (through
    fragments too), for the per-field limits; nothing when the document does not parse (the
    parse error is reported by the normal path)."""
    try:
        document = parse(query, no_location=True, max_tokens=max_tokens)
    except GraphQLError:
        return ()
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is not None:
        operations = [o for o in operations if o.name and o.name.value == operation_name]
    if len(operations) != 1:
        return ()
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    counts: Counter[str] = Counter()

    def collect(selection_set: SelectionSetNode, seen: frozenset[str]) -> None:
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                counts[selection.name.value] += 1
            elif isinstance(selection, InlineFragmentNode):
                collect(selection.selection_set, seen)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                if name in fragments and name not in seen:
                    collect(fragments[name].selection_set, seen | {name})

    collect(operations[0].selection_set, frozenset())
    return tuple(counts.items())
