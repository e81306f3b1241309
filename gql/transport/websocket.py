"""GraphQL over WebSocket on `/graphql`: the graphql-transport-ws protocol (the `graphql-ws`
library's, which GraphiQL, Apollo Client and urql speak), with the HTTP endpoint's pieces: the
document cache (parse, limits, validation), `authenticate`, the rate limits, the executor's
execution context, the schema's context.

A connection: `connection_init` (the token in its payload, `{"Authorization": "Bearer …"}`,
either key case; a token sent and refused closes with 4401), then any number of `subscribe`
messages, each answered by `next` results and `complete`, or one `error`. Subscriptions run as
tasks of the connection; the server pings every WEBSOCKET_PING_SECONDS."""

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from graphql import (
    DocumentNode,
    ExecutionResult,
    GraphQLError,
    OperationType,
)
from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.utils import ClientDisconnected

from core.settings import Settings
from gql.engine.documents import DocumentCache
from gql.engine.executor import Executor
from gql.errors import (
    BAD_REQUEST,
    log_unexpected,
    with_codes,
)
from gql.schema.context import Context
from gql.transport.authentication import authenticate
from gql.transport.endpoint import GRAPHQL_PATH, GraphQLEndpoint, request_context, response_data
from gql.transport.metrics import ERRORS, SUBSCRIPTION_DROPS
from gql.transport.ratelimit import RateLimiter, caller_key
from gql.transport.refusals import Refused, check_query_size
from gql.transport.subscriptions import Rejected, results, subscription_context
from services.auth import Actor

logger = logging.getLogger(__name__)

PROTOCOL = "graphql-transport-ws"
# Close codes of graphql-transport-ws (and 4429 for our per-connection message limit).
BAD_MESSAGE = 4400
UNAUTHORIZED = 4401
FORBIDDEN = 4403
INIT_TIMEOUT = 4408
DUPLICATE_ID = 4409
TOO_MANY = 4429
TRY_AGAIN_LATER = 1013
# How long an error for a dropped subscription may take to go out to a client that reads
# nothing (its sends are what fell behind).
DROP_NOTICE_SECONDS = 1.0


class Closed(Exception):
    """The connection was closed by us: the receive loop ends."""


@dataclass(slots=True)
class Operation:
    id: str
    task: asyncio.Task[None] | None = None
    dropped: bool = False


@dataclass(slots=True)
class MessageBudget:
    """A token bucket: `rate` messages a second, bursts of `burst`."""

    rate: float
    burst: float
    tokens: float = 0.0
    at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class GraphQLWebSocket:
    """ASGI: WebSocket connections to `/graphql` here, everything else to `app`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        documents: DocumentCache,
        executor: Executor,
        rate_limiter: RateLimiter,
        state: State,
    ) -> None:
        self.app = app
        self.settings = settings
        self.documents = documents
        self.executor = executor
        self.rate_limiter = rate_limiter
        self.state = state

    @classmethod
    def beside(cls, endpoint: GraphQLEndpoint) -> "GraphQLWebSocket":
        """WebSockets in front of `endpoint`, with its pieces; HTTP goes on to it."""
        return cls(
            endpoint,
            settings=endpoint.settings,
            documents=endpoint.documents,
            executor=endpoint.executor,
            rate_limiter=endpoint.rate_limiter,
            state=endpoint.state,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket" or scope["path"] != GRAPHQL_PATH:
            await self.app(scope, receive, send)
            return
        await WebSocketConnection(self, scope, receive, send).run()


class WebSocketConnection:
    """One client's connection, from handshake to close."""

    def __init__(self, server: GraphQLWebSocket, scope: Scope, receive: Receive, send: Send):
        self.server = server
        self.settings = server.settings
        self.scope = scope
        self._receive = receive
        self._send = send
        self._send_lock = asyncio.Lock()
        self.closed = False
        self.acknowledged = False
        self.authorization: str | None = None
        self.viewer: Actor | None = None
        self.operations: dict[str, Operation] = {}
        # A page opens its subscriptions at once: room for all of them on top of the rate.
        rate = self.settings.websocket_messages_per_second
        burst = 2 * rate + self.settings.subscriptions_per_connection + 1
        self.budget = MessageBudget(rate, burst)
        self.peer = scope["client"][0] if scope.get("client") else None
        self.forwarded_for = [
            value.decode("latin-1")
            for name, value in scope["headers"]
            if name == b"x-forwarded-for"
        ]

    async def run(self) -> None:
        message = await self._receive()
        if message["type"] != "websocket.connect":
            return
        if PROTOCOL not in self.scope.get("subprotocols", ()):
            # Refused at the handshake (HTTP 403): only graphql-transport-ws is spoken here.
            await self._send({"type": "websocket.close", "code": FORBIDDEN})
            return
        await self._send({"type": "websocket.accept", "subprotocol": PROTOCOL})
        pinger = asyncio.create_task(self._ping())
        try:
            await self._serve()
        except Closed:
            pass
        finally:
            pinger.cancel()
            for operation in list(self.operations.values()):
                if operation.task is not None:
                    operation.task.cancel()
            tasks = [op.task for op in self.operations.values() if op.task is not None]
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self) -> None:
        try:
            async with asyncio.timeout(self.settings.websocket_init_timeout_seconds):
                first = await self._next_message()
        except TimeoutError:
            await self.close(INIT_TIMEOUT, "Connection initialisation timeout")
        if first is None:
            return
        await self._handle(first)
        while True:
            message = await self._next_message()
            if message is None:
                return
            await self._handle(message)

    async def _next_message(self) -> dict[str, Any] | None:
        """The next message, decoded; None once the client has gone."""
        message = await self._receive()
        if message["type"] == "websocket.disconnect":
            self.closed = True
            return None
        if not self.budget.take():
            await self.close(TOO_MANY, "Too many messages")
        raw = message.get("text") or message.get("bytes") or b""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            await self.close(BAD_MESSAGE, "Invalid message received")
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            await self.close(BAD_MESSAGE, "Invalid message received")
        message_data: dict[str, Any] = data
        return message_data

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "connection_init":
            await self._init(message.get("payload"))
        elif kind == "ping":
            await self.send_message({"type": "pong"})
        elif kind == "pong":
            pass
        elif kind == "subscribe":
            await self._subscribe(message)
        elif kind == "complete":
            operation = self.operations.get(str(message.get("id")))
            if operation is not None and operation.task is not None:
                operation.task.cancel()
        else:
            await self.close(BAD_MESSAGE, f"Unexpected message of type {kind[:30]!r}")

    async def _init(self, payload: object) -> None:
        if self.acknowledged:
            await self.close(TOO_MANY, "Too many initialisation requests")
        header = None
        if isinstance(payload, dict):
            value = payload.get("Authorization", payload.get("authorization"))
            header = value if isinstance(value, str) else None
        context = self._context()
        try:
            await authenticate(context, header, self.server.state.authenticator)
        except Refused as refused:
            if refused.status == 503:
                await self.close(TRY_AGAIN_LATER, refused.message[:120])
            await self.close(UNAUTHORIZED, f"Unauthorized: {refused.message}"[:120])
        finally:
            await context.close()
        if header and context.viewer is None:
            await self.close(UNAUTHORIZED, f"Unauthorized: {context.auth_error}"[:120])
        self.authorization = header
        self.viewer = context.viewer
        self.acknowledged = True
        await self.send_message({"type": "connection_ack"})

    async def _subscribe(self, message: dict[str, Any]) -> None:
        if not self.acknowledged:
            await self.close(UNAUTHORIZED, "Unauthorized")
        operation_id = message.get("id")
        payload = message.get("payload")
        if not isinstance(operation_id, str) or not operation_id or not isinstance(payload, dict):
            await self.close(BAD_MESSAGE, "Invalid subscribe message")
        assert isinstance(operation_id, str) and isinstance(payload, dict)
        if operation_id in self.operations:
            await self.close(DUPLICATE_ID, f"Subscriber for {operation_id[:64]} already exists")
        operation = Operation(operation_id)
        if len(self.operations) >= self.settings.subscriptions_per_connection:
            # Counted here, in arrival order: the operations open (or starting) right now.
            limit = _error("SUBSCRIPTION_LIMIT", "Too many operations open on this connection")
            await self._send_error(operation, [limit])
            return
        self.operations[operation_id] = operation
        operation.task = asyncio.create_task(self._run(operation, payload))

    async def _run(self, operation: Operation, payload: dict[str, Any]) -> None:
        """One operation, start to end; its errors go to the client as an `error` message."""
        try:
            await self._execute(operation, payload)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not operation.dropped or task is None:
                raise
            task.uncancel()
            SUBSCRIPTION_DROPS.labels("slow_consumer").inc()
            logger.info("subscription %s dropped: slow consumer", operation.id)
            notice = _error("SLOW_CONSUMER", "Events came faster than they were taken")
            try:
                async with asyncio.timeout(DROP_NOTICE_SECONDS):
                    await self._send_error(operation, [notice])
            except TimeoutError:
                pass
        except Rejected as rejected:
            await self._send_error(operation, rejected.errors)
        except Exception as error:  # a dependency down, a bug: masked, logged once
            failure = GraphQLError(str(error), original_error=error)
            log_unexpected([failure])
            SUBSCRIPTION_DROPS.labels("error").inc()
            await self._send_error(operation, [failure])
        finally:
            self.operations.pop(operation.id, None)

    async def _execute(self, operation: Operation, payload: dict[str, Any]) -> None:
        query = payload.get("query")
        variables = payload.get("variables")
        operation_name = payload.get("operationName")
        if not isinstance(query, str):
            raise Rejected([_error(BAD_REQUEST, "The subscribe payload needs a `query` string")])
        if variables is not None and not isinstance(variables, dict):
            raise Rejected([_error(BAD_REQUEST, "`variables` must be an object or null")])
        if operation_name is not None and not isinstance(operation_name, str):
            raise Rejected([_error(BAD_REQUEST, "`operationName` must be a string or null")])
        documents = self.server.documents
        try:
            check_query_size(query, self.settings.max_query_bytes)
            document = documents.parsed(query)
            definition = document.operation(operation_name) if document.ast else None
            # Every operation counts, those that fail to parse or validate too (as over HTTP).
            caller = caller_key(
                self.viewer, self.peer, self.forwarded_for, self.settings.trusted_proxies
            )
            await self.server.rate_limiter.check_operation(caller, query, document, definition)
        except Refused as refused:
            raise Rejected([_error(refused.code, refused.message)]) from None
        if document.ast is None:
            raise Rejected(list(document.parse_errors))
        if definition is None:
            raise Rejected([_error(BAD_REQUEST, "Unknown or ambiguous operation")])
        errors = documents.validate(document)
        if errors:
            raise Rejected(list(errors))
        if definition.operation is not OperationType.SUBSCRIPTION:
            context = self._context()
            try:
                result = await self.server.executor.execute(
                    document, definition, variables=variables, context=context
                )
            finally:
                await context.close()
            await self._send_result(operation, result)
            await self.send_message({"type": "complete", "id": operation.id})
            return
        await self._stream(operation, document.ast, operation_name, variables)

    async def _stream(
        self,
        operation: Operation,
        document: DocumentNode,
        operation_name: str | None,
        variables: dict[str, Any] | None,
    ) -> None:
        def dropped() -> None:
            operation.dropped = True
            if operation.task is not None:
                operation.task.cancel()

        context = subscription_context(
            self.server.state,
            self.settings,
            viewer=self.viewer,
            authorization=self.authorization,
            on_drop=dropped,
        )
        stream = results(
            self.server.executor,
            document,
            operation_name=operation_name,
            variables=variables,
            context=context,
        )
        try:
            async with contextlib.aclosing(stream):
                async for result in stream:
                    await self._send_result(operation, result)
            await self.send_message({"type": "complete", "id": operation.id})
        finally:
            await context.close()

    def _context(self) -> Context:
        return request_context(self.server.state, self.settings, viewer=self.viewer)

    async def _send_result(self, operation: Operation, result: ExecutionResult) -> None:
        if result.errors:
            log_unexpected(result.errors)
        await self.send_message(
            {"type": "next", "id": operation.id, "payload": response_data(result)}
        )

    async def _send_error(self, operation: Operation, errors: list[GraphQLError]) -> None:
        if self.closed:
            return
        coded = with_codes(errors) or []
        for error in coded:
            ERRORS.labels((error.extensions or {}).get("code", "UNKNOWN")).inc()
        await self.send_message(
            {"type": "error", "id": operation.id, "payload": [e.formatted for e in coded]}
        )

    async def send_message(self, message: dict[str, Any]) -> None:
        """Send one protocol message; nothing once the connection is closed (a client that
        went away is noticed here as well as by the receive loop)."""
        if self.closed:
            return
        text = orjson.dumps(message).decode()
        async with self._send_lock:
            try:
                await self._send({"type": "websocket.send", "text": text})
            except (OSError, ClientDisconnected):
                self.closed = True

    async def close(self, code: int, reason: str) -> None:
        """Close the connection and end the receive loop (raises Closed)."""
        if not self.closed:
            self.closed = True
            logger.info("websocket closed by the server: %s %s", code, reason)
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        raise Closed

    async def _ping(self) -> None:
        """Keep-alive pings; a token no longer valid closes the connection (4401) even when no
        event comes to find it out."""
        while True:
            await asyncio.sleep(self.settings.websocket_ping_seconds)
            await self.send_message({"type": "ping"})
            if self.viewer is not None and not await self._still_authorized():
                SUBSCRIPTION_DROPS.labels("unauthenticated").inc()
                with contextlib.suppress(Closed):
                    await self.close(UNAUTHORIZED, "Unauthorized: the token is no longer valid")
                for operation in list(self.operations.values()):
                    if operation.task is not None:
                        operation.task.cancel()
                return

    async def _still_authorized(self) -> bool:
        context = self._context()
        try:
            await authenticate(context, self.authorization, self.server.state.authenticator)
        except Refused:
            return False
        finally:
            await context.close()
        return context.viewer is not None


def _error(code: str, message: str) -> GraphQLError:
    return GraphQLError(message, extensions={"code": code})
