"""The fast lane: `POST /graphql` of an operation the full path has already parsed, validated
and run (`gql.prepared`), executed straight from the ASGI call.

On the full path, FastAPI's routing and dependency solving and Strawberry's HTTP view and
extension runner cost about as much CPU as executing an order history (measured with py-spy;
see docs/request-pipeline.md). Here the same steps are taken directly: the same viewer lookup,
rate limits, compiled executor, error codes, metrics and response shapes; only their plumbing
is skipped.
The lane sits inside the edge middleware (correlation ID, error shield, body limit, CORS), so
those apply to it unchanged.

Whatever is not a plain JSON operation it has prepared (a first sighting, GET, batches,
persisted queries, streaming, bodies that do not parse) goes to the full path untouched, so
every refusal and request error keeps a single implementation there.
"""

import time
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import BackgroundTasks
from graphql import ExecutionResult, execute
from starlette.datastructures import State
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.execution import optimized_is_awaitable

from gql.context import Context
from gql.deps import authenticate, request_context
from gql.errors import log_unexpected
from gql.metrics import observe_latency
from gql.prepared import PreparedOperation
from gql.router import (
    GRAPHQL_PATH,
    GRAPHQL_RESPONSE_JSON,
    JSON,
    Edge,
    Refused,
    prefers_graphql_response_json,
    refusal_response,
    response_data,
)
from gql.schema import Schema

# Streaming transports (incremental delivery, subscriptions over HTTP) stay on the full path.
_STREAMING = (b"multipart/mixed", b"text/event-stream")


class FastLane:
    def __init__(self, app: ASGIApp, *, schema: Schema, edge: Edge, state: State) -> None:
        self.app = app
        self.schema = schema
        self.edge = edge
        self.state = state  # the app's: its session factory exists once the lifespan started
        # An allow-list admits only persisted queries: their checks live on the full path.
        self.enabled = edge.persisted_queries.allow_list is None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            not self.enabled
            or scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] != GRAPHQL_PATH
        ):
            await self.app(scope, receive, send)
            return
        content_type = accept = authorization = None
        forwarded_for: list[str] = []
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"accept":
                accept = value
            elif name == b"authorization":
                authorization = value
            elif name == b"x-forwarded-for":
                forwarded_for.append(value.decode("latin-1"))
        if (
            content_type is None
            or not content_type.startswith(b"application/json")
            or (accept is not None and any(kind in accept for kind in _STREAMING))
        ):
            await self.app(scope, receive, send)
            return
        body, more = await _read_body(receive)
        operation = None if more else self._operation_of(body)
        if operation is None:
            await self.app(scope, _replay(body, more, receive), send)
            return
        client = scope.get("client")
        call = _Call(
            *operation,
            authorization=None if authorization is None else authorization.decode("latin-1"),
            accept=None if accept is None else accept.decode("latin-1"),
            peer=client[0] if client else None,
            forwarded_for=forwarded_for,
        )
        await self._run(call, send)

    def _operation_of(
        self, body: bytes
    ) -> tuple[PreparedOperation, str, str | None, dict[str, Any] | None] | None:
        """The prepared operation a body asks for (with its query text, operation name and
        variables), or None for anything else."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if type(data) is not dict or "extensions" in data:
            return None
        query = data.get("query")
        operation_name = data.get("operationName")
        variables = data.get("variables")
        if (
            type(query) is not str
            or (operation_name is not None and type(operation_name) is not str)
            or (variables is not None and type(variables) is not dict)
        ):
            return None
        prepared = self.edge.prepared.get(query, operation_name)
        if prepared is None:
            return None
        return prepared, query, operation_name, variables

    async def _run(self, call: "_Call", send: Send) -> None:
        background = BackgroundTasks()
        context = request_context(self.state.session_factory, self.edge.settings, background)
        try:
            await authenticate(context, call.authorization, self.edge.actors)
            await self.edge.check_rate_limits(
                context.viewer, call.peer, call.forwarded_for, [(call.query, call.operation_name)]
            )
            started = time.perf_counter()
            result = await self._execute(call, context)
            observe_latency(
                call.operation_name,
                call.prepared.operation_type.value,
                time.perf_counter() - started,
            )
        except Refused as refused:
            status, media_type, body = refusal_response(refused, call.accept)
            headers = [(k.lower().encode(), v.encode()) for k, v in refused.headers.items()]
            await _respond(send, status, media_type, body, headers)
            return
        finally:
            # The connection goes back to the pool before the response is written.
            await context.close()
        if result.errors:
            log_unexpected(result.errors)
        body = orjson.dumps(response_data(result))
        media_type = GRAPHQL_RESPONSE_JSON if prefers_graphql_response_json(call.accept) else JSON
        await _respond(send, 200, media_type, body)
        await background()

    async def _execute(self, call: "_Call", context: Context) -> ExecutionResult:
        outcome = execute(
            self.schema._schema,
            call.prepared.document,
            context_value=context,
            variable_values=call.variables,
            operation_name=call.operation_name,
            executor_class=self.schema.execution_context_class,
            is_awaitable=optimized_is_awaitable,
            operation_extensions=None,
        )
        if optimized_is_awaitable(outcome):
            outcome = await outcome  # type: ignore[misc]
        assert isinstance(outcome, ExecutionResult)
        return outcome


@dataclass(slots=True)
class _Call:
    """One request on the lane: what the body asked for, and what the headers said."""

    prepared: PreparedOperation
    query: str
    operation_name: str | None
    variables: dict[str, Any] | None
    authorization: str | None
    accept: str | None
    peer: str | None
    forwarded_for: list[str]


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The request body, whole; `more` is True only if the client went away mid-body."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), True
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _replay(body: bytes, disconnected: bool, receive: Receive) -> Receive:
    """A `receive` that hands the full path the body already read, then the real channel."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            if disconnected:
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _respond(
    send: Send,
    status: int,
    media_type: str,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", media_type.encode()),
                (b"content-length", str(len(body)).encode()),
                *(headers or ()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
