"""Subscriptions over plain HTTP, for clients that cannot open a WebSocket: Apollo's multipart
subscription protocol (`Accept: multipart/mixed;subscriptionSpec="1.0"`), which Apollo Client
and Apollo Router's federated subscriptions speak. The POST's response stays open: one part
per result (`{"payload": {...}}`), an empty part `{}` as a heartbeat when nothing happened for
HEARTBEAT_SECONDS, `{"payload": null, "errors": [...]}` when the server ends it, then the
closing boundary. The request went through the endpoint's whole pipeline first (parse, rate
limits, validation); the events through the same `results` as the WebSocket's."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from graphql import ExecutionResult
from starlette.types import Receive, Send

from gql.errors import log_unexpected, with_codes
from gql.schema.subscriptions import SubscriptionContext
from gql.transport.metrics import ERRORS
from gql.transport.subscriptions import Rejected

MEDIA_TYPE = 'multipart/mixed;boundary="graphql";subscriptionSpec="1.0"'
HEARTBEAT_SECONDS = 5.0
_PART = b"\r\n--graphql\r\ncontent-type: application/json; charset=utf-8\r\n\r\n"
_END = b"\r\n--graphql--\r\n"


def wants_multipart(accept: str | None) -> bool:
    """Whether the client accepts Apollo's multipart subscriptions."""
    if not accept:
        return False
    text = accept.lower()
    return "multipart/mixed" in text and "subscriptionspec" in text


async def _send_part(send: Send, body: dict[str, Any]) -> None:
    await send(
        {"type": "http.response.body", "body": _PART + orjson.dumps(body), "more_body": True}
    )


class MultipartStream:
    """The open response of one subscription, sent by `send` until the stream ends, the
    server ends it, or the client goes away (`receive` says `http.disconnect`)."""

    def __init__(
        self,
        results: AsyncIterator[ExecutionResult],
        context: SubscriptionContext,
        receive: Receive,
        *,
        heartbeat: float = HEARTBEAT_SECONDS,
        data_of: Any,
    ) -> None:
        self.results = results
        self.context = context
        self.receive = receive
        self.heartbeat = heartbeat
        self.data_of = data_of  # the endpoint's `response_data`: codes and error counts
        self.headers: dict[str, str] = {}  # as an endpoint's Answer has

    async def send(self, send: Send) -> None:
        headers = [(b"content-type", MEDIA_TYPE.encode()), (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        gone = asyncio.ensure_future(self._client_gone())
        try:
            if await self._stream(send, gone):
                await send({"type": "http.response.body", "body": _END})
        finally:
            gone.cancel()
            await self.context.close()

    async def _stream(self, send: Send, gone: "asyncio.Future[None]") -> bool:
        """Send each result as it comes; False when the client went away."""
        iterator = aiter(self.results)
        try:
            while True:
                upcoming = asyncio.ensure_future(anext(iterator))
                waiting: set[asyncio.Future[Any]] = {upcoming, gone}
                while True:
                    done, _ = await asyncio.wait(
                        waiting, timeout=self.heartbeat, return_when="FIRST_COMPLETED"
                    )
                    if gone in done:
                        upcoming.cancel()
                        with contextlib.suppress(BaseException):
                            await upcoming  # the generator has stopped before it is closed
                        return False
                    if upcoming in done:
                        break
                    await _send_part(send, {})
                try:
                    result = upcoming.result()
                except StopAsyncIteration:
                    return True
                except Rejected as rejected:
                    errors = with_codes(rejected.errors) or []
                    for error in errors:
                        ERRORS.labels((error.extensions or {}).get("code", "UNKNOWN")).inc()
                    body = {"payload": None, "errors": [error.formatted for error in errors]}
                    await _send_part(send, body)
                    return True
                if result.errors:
                    log_unexpected(result.errors)
                body = {"payload": self.data_of(result)}
                await _send_part(send, body)
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _client_gone(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
