"""The GraphQL endpoint: the one pipeline every request to `/graphql` goes through, GET or POST,
persisted or not, first sighting or thousandth. Read `GraphQLEndpoint.handle` top to bottom for
the story of a request (docs/request-pipeline.md tells it with the files of each step).

Strawberry is the schema library here; the view is ours, as saleor owns its one view: the HTTP
view Strawberry ships (behind FastAPI's routing and dependency solving) cost as much CPU per
request as executing an order history, and a second, faster path beside it re-implemented half
of it. The edge middleware (correlation ID, CORS, error shield, body limit) wraps this endpoint;
the FastAPI app behind it serves the rest (health, metrics, GraphiQL's assets).
"""

import time
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import orjson
from graphql import (
    DocumentNode,
    ExecutionResult,
    GraphQLError,
    OperationDefinitionNode,
    OperationType,
)
from starlette.background import BackgroundTasks
from starlette.datastructures import State
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send
from strawberry.http import GraphQLHTTPResponse, process_result

from core.correlation import current_correlation_id
from core.settings import Settings
from db.reads import PooledReads
from gql.engine.documents import Document, DocumentCache
from gql.engine.executor import Executor
from gql.errors import (
    BAD_REQUEST,
    NOT_FOUND,
    PERSISTED_QUERY_NOT_ALLOWED,
    PERSISTED_QUERY_NOT_FOUND,
    error_body,
    log_unexpected,
    with_codes,
)
from gql.schema.context import Context
from gql.transport.apq import SHA256_PREFIX, PersistedQueries, is_sha256, sha256_of
from gql.transport.authentication import authenticate
from gql.transport.caching import PRIVATE, PUBLIC_VARY, CachePolicy, etag_of, is_fresh
from gql.transport.graphiql import graphiql_html
from gql.transport.metrics import ERRORS, observe_latency
from gql.transport.multipart import MultipartStream, wants_multipart
from gql.transport.ratelimit import RateLimiter, caller_key
from gql.transport.refusals import Refused, check_query_size
from gql.transport.subscriptions import results, subscription_context
from gql.transport.tracing import name_operation, operation_event, operation_span
from services.auth import Actor

T = TypeVar("T")

GRAPHQL_PATH = "/graphql"
GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
JSON = "application/json"
ALLOWED_METHODS = "GET, POST"
SUBSCRIPTIONS_OVER_WEBSOCKET = (
    "Subscriptions are served over WebSocket on this path (graphql-transport-ws), or over "
    'HTTP with Accept: multipart/mixed;subscriptionSpec="1.0"'
)


def method_not_allowed(message: str) -> Refused:
    return Refused(405, BAD_REQUEST, message, {"Allow": ALLOWED_METHODS})


@dataclass(slots=True)
class HttpRequest:
    """What the pipeline reads of the HTTP request, taken from the scope's headers once."""

    method: str
    query_string: bytes
    content_type: str = ""
    accept: str | None = None
    authorization: str | None = None
    if_none_match: str | None = None
    peer: str | None = None
    forwarded_for: list[str] = field(default_factory=list)
    _query_params: dict[str, str] | None = None

    def query_params(self) -> dict[str, str]:
        """The query string's parameters (the first of a repeated name), read once."""
        if self._query_params is None:
            params: dict[str, str] = {}
            for key, value in parse_qsl(
                self.query_string.decode("latin-1"), keep_blank_values=True
            ):
                params.setdefault(key, value)
            self._query_params = params
        return self._query_params

    @classmethod
    def from_scope(cls, scope: Scope) -> "HttpRequest":
        client = scope.get("client")
        request = cls(scope["method"], scope.get("query_string", b""))
        request.peer = client[0] if client else None
        for name, value in scope["headers"]:
            if name == b"content-type":
                request.content_type = value.decode("latin-1")
            elif name == b"accept":
                request.accept = value.decode("latin-1")
            elif name == b"authorization":
                request.authorization = value.decode("latin-1")
            elif name == b"if-none-match":
                request.if_none_match = value.decode("latin-1")
            elif name == b"x-forwarded-for":
                request.forwarded_for.append(value.decode("latin-1"))
        return request


@dataclass(slots=True)
class GraphQLParams:
    """A GraphQL request's parameters, as GraphQL over HTTP names them."""

    query: str | None
    document_id: str | None = None
    variables: dict[str, Any] | None = None
    operation_name: str | None = None
    extensions: dict[str, Any] | None = None
    # Set when the request sent a persisted query's hash and text: the text is stored under the
    # hash once the request has passed the rate limits and validated, so a refused or invalid
    # request leaves nothing behind.
    register_as: str | None = None


@dataclass(slots=True)
class Answer:
    status: int
    media_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    async def send(self, send: Send) -> None:
        headers = [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        if self.status != 304:  # Not Modified: no content, so no content headers
            headers[:0] = [
                (b"content-type", self.media_type.encode()),
                (b"content-length", str(len(self.body)).encode()),
            ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


class GraphQLEndpoint:
    """ASGI: `/graphql` here, every other path to `app`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        documents: DocumentCache,
        executor: Executor,
        rate_limiter: RateLimiter,
        persisted_queries: PersistedQueries,
        state: State,
        graphiql: bool,
    ) -> None:
        self.app = app
        self.settings = settings
        self.documents = documents
        self.executor = executor
        self.rate_limiter = rate_limiter
        self.persisted_queries = persisted_queries
        self.state = state  # the app's: its session factory exists once the lifespan started
        self.graphiql = graphiql
        self.cache_policy = CachePolicy(settings.http_cache_max_age)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != GRAPHQL_PATH:
            await self.app(scope, receive, send)
            return
        request = HttpRequest.from_scope(scope)
        background = BackgroundTasks()
        try:
            with operation_span():  # tracing (gql/transport/tracing.py); nothing when off
                answer = await self.handle(request, receive, background)
        except Refused as refused:
            answer = refusal_answer(refused, request.accept)
        if request.method == "GET" and "Cache-Control" not in answer.headers:
            answer.headers["Cache-Control"] = PRIVATE
        await answer.send(send)
        await background()

    async def handle(
        self, request: HttpRequest, receive: Receive, background: BackgroundTasks
    ) -> Answer | MultipartStream:
        """The story of one request."""
        if request.method not in ("GET", "POST"):
            raise method_not_allowed(f"{request.method} is not served here: use GET or POST")
        if request.method == "GET" and self._wants_graphiql(request):
            if not self.graphiql:
                raise Refused(404, NOT_FOUND, "Not Found")
            return Answer(200, "text/html; charset=utf-8", graphiql_html().encode())
        params = await self._params(request, receive)
        params = await self._resolve_persisted(params)
        if params.query is None:
            raise Refused(400, BAD_REQUEST, "No GraphQL query found in the request")

        document = self.documents.parsed(params.query)
        operation = document.operation(params.operation_name) if document.ast else None
        name_operation(operation)
        # A GET's answer may be cached and revalidated by its ETag, a hash of its bytes: it is
        # written from objects only, so the same answer keeps the same bytes, warm or cold
        # (JSON PostgreSQL wrote is equal as JSON, spaced otherwise).
        context = request_context(
            self.state,
            self.settings,
            background=background,
            json_fragments=request.method != "GET",
        )
        # It takes a pooled connection only at its first statement, and gives it back at
        # `Context.close`, below.
        try:
            # Only now, with the body read whole: a connection taken before would wait on a
            # slow client.
            refusal = await self._authenticate(context, request)
            # Every request counts, the ones that fail to parse or validate too, and those
            # with a token refused (each cost a signature check).
            caller = caller_key(
                context.viewer, request.peer, request.forwarded_for, self.settings.trusted_proxies
            )
            await self.rate_limiter.check_operation(caller, params.query, document, operation)
            if refusal is not None:
                raise refusal
            if document.ast is None:
                return self._request_errors(document.parse_errors, request)
            if operation is None:
                raise Refused(400, BAD_REQUEST, _no_operation(params.operation_name))
            _check_method(request.method, operation)
            errors = self.documents.validate(document)
            operation_event("graphql.validate")
            if errors:
                return self._request_errors(errors, request)
            if operation.operation is OperationType.SUBSCRIPTION:
                return self._subscription(request, receive, params, document.ast, context)
            started = time.perf_counter()
            result = await self.executor.execute(
                document, operation, variables=params.variables, context=context
            )
            operation_event("graphql.execute")
            observe_latency(
                params.operation_name, operation.operation.value, time.perf_counter() - started
            )
        finally:
            # The connection goes back to the pool before the response is written.
            await context.close()
        if params.register_as is not None:
            await self.persisted_queries.put(params.register_as, params.query)
        if result.errors:
            log_unexpected(result.errors)
        return self._result_answer(request, params, document, operation, result)

    def _subscription(
        self,
        request: HttpRequest,
        receive: Receive,
        params: GraphQLParams,
        document: DocumentNode,
        context: Context,
    ) -> MultipartStream:
        """A subscription over HTTP: Apollo's multipart protocol when the client asks for it
        (gql/transport/multipart.py), else a pointer to the WebSocket on this path."""
        if not wants_multipart(request.accept):
            raise Refused(400, BAD_REQUEST, SUBSCRIPTIONS_OVER_WEBSOCKET)
        own = subscription_context(
            self.state, self.settings, viewer=context.viewer, authorization=request.authorization
        )
        stream = results(
            self.executor,
            document,
            operation_name=params.operation_name,
            variables=params.variables,
            context=own,
        )
        return MultipartStream(stream, own, receive, data_of=response_data)

    async def _authenticate(self, context: Context, request: HttpRequest) -> Refused | None:
        """Set the viewer; a token refused outright is returned, to be raised once the request
        has been counted against the rate limits."""
        try:
            await authenticate(context, request.authorization, self.state.authenticator)
        except Refused as refused:
            return refused
        return None

    def _result_answer(
        self,
        request: HttpRequest,
        params: GraphQLParams,
        document: Document,
        operation: OperationDefinitionNode,
        result: ExecutionResult,
    ) -> Answer:
        """The answer of an executed result; for GET, with its `Cache-Control` (public only
        when anonymous, without errors, and of public fields only: gql.transport.caching), its
        `ETag`, and 304 when the client has it already."""
        answer = Answer(200, _media_type(request.accept), orjson.dumps(response_data(result)))
        if request.method != "GET":
            return answer
        cache_control = PRIVATE
        if request.authorization is None and not result.errors:
            cache_control = self.cache_policy.cache_control(document, operation, params.variables)
        etag = etag_of(answer.body)
        answer.headers["Cache-Control"] = cache_control
        answer.headers["ETag"] = etag
        if cache_control != PRIVATE:
            answer.headers["Vary"] = PUBLIC_VARY
        if is_fresh(request.if_none_match, etag):
            answer.status = 304
            answer.body = b""
        return answer

    def _wants_graphiql(self, request: HttpRequest) -> bool:
        """A browser (text/html in Accept), also on a shared link with a query in its editor;
        API clients still get the result of a GET."""
        params = request.query_params()
        if ("extensions" in params or "documentId" in params) and "query" not in params:
            return False  # only a persisted document's id: an API client
        accept = request.accept or ""
        return "text/html" in accept or ("query" not in params and "*/*" in accept)

    async def _params(self, request: HttpRequest, receive: Receive) -> GraphQLParams:
        if request.method == "GET":
            data: Any = dict(request.query_params())
            for key in ("variables", "extensions"):
                if data.get(key):
                    data[key] = _json(data[key].encode())
                elif key in data:
                    data[key] = None
        elif "application/json" in request.content_type:
            data = _json(await _read_body(receive))
        else:
            raise Refused(400, BAD_REQUEST, "Unsupported content type")
        if isinstance(data, list):
            raise Refused(400, BAD_REQUEST, "Batching is not enabled")
        if not isinstance(data, dict):
            raise Refused(
                400, BAD_REQUEST, "The request body must be a JSON object (a GraphQL request)"
            )
        return GraphQLParams(
            query=_member(data, "query", str, "a string or null"),
            document_id=_member(data, "documentId", str, "a string or null"),
            variables=_member(data, "variables", dict, "an object or null"),
            operation_name=_member(data, "operationName", str, "a string"),
            extensions=_member(data, "extensions", dict, "an object or null"),
        )

    async def _resolve_persisted(self, params: GraphQLParams) -> GraphQLParams:
        """A persisted document's text. GraphQL over HTTP's `documentId` names one; Apollo APQ:
        the hash alone runs a known query, hash and query register it (once the request has
        passed the rate limits and validated)."""
        if params.document_id is not None:
            if params.query is not None:
                raise Refused(400, BAD_REQUEST, "Send either `documentId` or `query`, not both")
            params.query = await self._persisted_document(params.document_id)
            return params
        if params.query is not None:
            check_query_size(params.query, self.settings.max_query_bytes)
        store = self.persisted_queries
        persisted = (params.extensions or {}).get("persistedQuery")
        if persisted is None:
            if store.allow_list is not None:
                raise Refused(
                    400, PERSISTED_QUERY_NOT_ALLOWED, "Only persisted queries may run here"
                )
            return params
        sha = persisted.get("sha256Hash") if isinstance(persisted, dict) else None
        if not isinstance(persisted, dict) or persisted.get("version") != 1 or not is_sha256(sha):
            raise Refused(
                400, BAD_REQUEST, "Unsupported persisted query: use version 1 and a sha256Hash"
            )
        assert isinstance(sha, str)
        if params.query is None:
            query = await store.get(sha)
            if query is None:
                # Apollo clients resend the full query on this message and code; 200 as
                # Apollo's servers answer, since nothing is wrong with the request.
                raise Refused(200, PERSISTED_QUERY_NOT_FOUND, "PersistedQueryNotFound")
            params.query = query
            return params
        if sha256_of(params.query) != sha:
            raise Refused(400, BAD_REQUEST, "provided sha does not match query")
        if store.allow_list is not None:
            if sha not in store.allow_list.by_sha:
                raise Refused(400, PERSISTED_QUERY_NOT_ALLOWED, "This query is not allowed here")
            return params
        params.register_as = sha
        return params

    async def _persisted_document(self, document_id: str) -> str:
        """The text a `documentId` names: any id of the manifest in allow-list mode, else
        `sha256:<hex>` (or the bare hex) of a query registered through APQ."""
        store = self.persisted_queries
        if store.allow_list is not None:
            query = store.allow_list.by_id.get(document_id)
            if query is None:
                # Nothing can register it: the answer is the allow-list's, not "send it".
                raise Refused(
                    400, PERSISTED_QUERY_NOT_ALLOWED, f"No document {document_id!r} is allowed here"
                )
            return query
        sha = document_id.removeprefix(SHA256_PREFIX)
        if not is_sha256(sha):
            raise Refused(
                400, BAD_REQUEST, "A documentId is `sha256:` and the document's SHA-256 in hex"
            )
        query = await store.get(sha)
        if query is None:
            raise Refused(
                400,
                PERSISTED_QUERY_NOT_FOUND,
                f"No persisted document {document_id!r}",
                request_error=True,
            )
        return query

    def _request_errors(self, errors: tuple[GraphQLError, ...], request: HttpRequest) -> Answer:
        """A request that failed before execution (parse, validation, limits): no `data` at
        all; 400 for clients of application/graphql-response+json, 200 for old clients."""
        body = response_data(ExecutionResult(None, list(errors)))
        body.pop("data", None)
        media_type = _media_type(request.accept)
        status = 400 if media_type == GRAPHQL_RESPONSE_JSON else 200
        return Answer(status, media_type, orjson.dumps(body))


def request_context(
    state: State,
    settings: Settings,
    *,
    viewer: Actor | None = None,
    background: BackgroundTasks | None = None,
    json_fragments: bool = True,
) -> Context:
    """The context of one operation (HTTP, or one over a WebSocket): its database access from
    the app's engine, no viewer until `authenticate` sets one (a WebSocket's is known)."""
    return Context(
        sessions=state.session_factory,
        reads=PooledReads(state.engine),
        settings=settings,
        viewer=viewer,
        auth_error=None,
        correlation_id=current_correlation_id(),
        background_tasks=background,
        # Answers are written by orjson (`response_data`, then `orjson.dumps`).
        json_fragments=json_fragments,
    )


def response_data(result: ExecutionResult) -> GraphQLHTTPResponse:
    """The response body of a result: every error with its stable code, and counted."""
    result.errors = with_codes(result.errors)
    if result.errors:
        for error in result.errors:
            ERRORS.labels((error.extensions or {}).get("code", "UNKNOWN")).inc()
    return process_result(result)


def refusal_answer(refused: Refused, accept: str | None) -> Answer:
    """The answer to a request turned away before execution."""
    ERRORS.labels(refused.code).inc()
    media_type = _media_type(accept)
    status = refused.status
    if refused.request_error:
        status = 400 if media_type == GRAPHQL_RESPONSE_JSON else 200
    body = orjson.dumps(error_body(refused.code, refused.message))
    return Answer(status, media_type, body, refused.headers)


def _media_type(accept: str | None) -> str:
    return GRAPHQL_RESPONSE_JSON if prefers_graphql_response_json(accept) else JSON


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


def _member(data: dict[str, Any], key: str, kind: type[T], expected: str) -> T | None:
    """A member of the request object, of `kind` or absent (null)."""
    value = data.get(key)
    if value is not None and not isinstance(value, kind):
        raise Refused(400, BAD_REQUEST, f"The GraphQL operation's `{key}` must be {expected}")
    return value


def _check_method(method: str, operation: OperationDefinitionNode) -> None:
    """Only queries over GET: a GET must not change anything, nor stay open."""
    if method == "GET" and operation.operation is not OperationType.QUERY:
        raise method_not_allowed(
            f"{operation.operation.value}s are not allowed when using GET: use POST"
        )


def _no_operation(name: str | None) -> str:
    if name is None:
        return "Can't get GraphQL operation type"
    return f'Unknown operation named "{name}".'


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Refused(400, BAD_REQUEST, "Unable to parse request body as JSON") from None


async def _read_body(receive: Receive) -> bytes:
    """The request body, whole (BodyLimitMiddleware bounds it as it streams in)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect  # the error shield knows a client that hung up
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
