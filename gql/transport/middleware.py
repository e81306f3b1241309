"""Pure ASGI middleware of the edge (no BaseHTTPMiddleware: it would run the app in another
task, where the correlation ID's ContextVar would not reach background tasks)."""

import logging
import os
import re

import orjson
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.utils import ClientDisconnected

from core.correlation import correlation_id_var
from gql.errors import (
    BAD_USER_INPUT,
    INTERNAL_SERVER_ERROR,
    MALFORMED_VALUE_MESSAGE,
    REQUEST_TOO_LARGE,
    SERVICE_UNAVAILABLE,
    UNAVAILABLE_MESSAGE,
    error_body,
    is_unavailable,
    log_malformed_value,
    malformed_value,
)
from gql.transport.metrics import ERRORS

logger = logging.getLogger("gql.errors")

CORRELATION_HEADER = b"x-correlation-id"
# Short and plain, so a client cannot smuggle log injection or a huge string into every log
# line and downstream call.
_WELL_FORMED = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def correlation_id_from(value: bytes | None) -> str:
    if value is not None:
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        if _WELL_FORMED.match(text):
            return text
    return new_correlation_id()


def new_correlation_id() -> str:
    """A random UUID (version 4), as `str(uuid.uuid4())` writes it, for half its cost: the
    `UUID` object in between is checked, converted and formatted for nothing."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


class CorrelationIdMiddleware:
    """Takes X-Correlation-ID when well formed, else makes one; keeps it in the ContextVar
    for the whole request (background tasks included: they run inside this call) and echoes
    it in the response (a WebSocket's: in the handshake's answer)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == CORRELATION_HEADER:
                incoming = value
                break
        correlation_id = correlation_id_from(incoming)
        scope.setdefault("state", {})["correlation_id"] = correlation_id
        header = (CORRELATION_HEADER, correlation_id.encode())

        async def send_with_id(message: Message) -> None:
            # The handshake's answer of a WebSocket carries headers too.
            if message["type"] in ("http.response.start", "websocket.accept"):
                headers = [h for h in message.get("headers", []) if h[0] != CORRELATION_HEADER]
                message["headers"] = [*headers, header]
            await send(message)

        token = correlation_id_var.set(correlation_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            correlation_id_var.reset(token)


class ErrorShieldMiddleware:
    """Whatever escapes the app (a failing dependency, the database down) becomes a
    GraphQL-shaped 500 or 503 with a code and the correlation ID: never a stack trace. The
    stack is logged here, once."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except RequestTooLarge as error:
            if not started:
                await _send_error(send, 413, REQUEST_TOO_LARGE, str(error))
        except (ClientDisconnect, ClientDisconnected):
            # The client went away (closed the connection mid-request): nobody to answer, and
            # nothing went wrong on our side, so no error line and no 500 in the metrics.
            logger.info("client disconnected: %s %s", scope.get("method"), scope.get("path"))
        except Exception as error:
            rejected = malformed_value(error)
            if rejected is not None:
                # A value the database refused (e.g. in a header it was given): the client's.
                log_malformed_value(rejected, f"{scope.get('method')} {scope.get('path')}")
                if not started:
                    await _send_error(send, 400, BAD_USER_INPUT, MALFORMED_VALUE_MESSAGE)
                return
            unavailable = is_unavailable(error)
            logger.error(
                "request failed outside GraphQL execution: %s %s",
                scope.get("method"),
                scope.get("path"),
                exc_info=error,
            )
            if started:
                # Too late for a clean answer; the server closes the connection.
                return
            if unavailable:
                await _send_error(send, 503, SERVICE_UNAVAILABLE, UNAVAILABLE_MESSAGE, retry=True)
            else:
                await _send_error(send, 500, INTERNAL_SERVER_ERROR, "Internal server error")


async def _send_error(
    send: Send, status: int, code: str, message: str, *, retry: bool = False
) -> None:
    ERRORS.labels(code).inc()
    body = orjson.dumps(error_body(code, message))
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if retry:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestTooLarge(Exception):
    """Raised from `receive` (or before it) and answered 413 by the shield."""


class BodyLimitMiddleware:
    """Refuses a request body over `max_bytes` before it is read into memory: by its
    Content-Length, or while it streams in when it has none (chunked)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        too_large = f"The request body exceeds {limit} bytes"
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > limit:
                    raise RequestTooLarge(too_large)
                break
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestTooLarge(too_large)
            return message

        await self.app(scope, counting_receive, send)
