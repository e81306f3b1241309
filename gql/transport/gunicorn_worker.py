"""The gunicorn worker for production: uvicorn on uvloop + httptools, with access logs written
as one JSON object per line, in batches."""

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TextIO

import orjson

# Neither ships type information (types-gunicorn is not a dependency): their classes are Any.
from gunicorn.glogging import Logger  # type: ignore[import-untyped]
from uvicorn_worker import UvicornWorker  # type: ignore[import-untyped]

from core.settings import get_settings
from gql.transport.access_log import redact_query_string
from gql.transport.http_protocol import BatchedWritesHttpToolsProtocol

GC_YOUNG_THRESHOLD = 5000

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# The client's address from the TCP peer and the X-Forwarded-For headers (gql.transport.ratelimit's
# client_ip with TRUSTED_PROXIES bound).
RemoteAddr = Callable[[str | None, list[str]], str]


class AccessLines:
    """Where access lines go: gunicorn's access logger's streams (stdout, or the file of
    `--access-logfile`), written in batches, at most `interval` seconds or `max_bytes` after
    the first line of a batch, and at exit; a line per write through the logger when it has
    other handlers (syslog...). A line through `logging` with gunicorn's format atoms cost
    27 µs, 6% of a point read's CPU: gunicorn builds every atom (all headers) for each line,
    and the handler writes and flushes each line on its own. The price of batching: lines of
    the last `interval` are lost if the process is killed (SIGKILL); an orderly stop writes
    them (see `AccessLogMiddleware._flush_at_shutdown`)."""

    def __init__(self, log: Logger, *, interval: float = 0.25, max_bytes: int = 64 * 1024) -> None:
        self._logger: logging.Logger = log.access_log
        handlers = self._logger.handlers
        streams = [
            h.stream for h in handlers if type(h) in (logging.StreamHandler, logging.FileHandler)
        ]
        self._streams: list[TextIO] = streams if streams and len(streams) == len(handlers) else []
        self.interval = interval
        self._max_bytes = max_bytes
        self._batch: list[str] = []
        self._size = 0
        self._second = -1
        self._second_text = ""

    def write(self, entry: dict[str, Any]) -> None:
        line = orjson.dumps(entry).decode()
        if not self._streams:
            self._logger.info(line)
            return
        if not self._batch:
            asyncio.get_running_loop().call_later(self.interval, self.flush)
        self._batch.append(line)
        self._size += len(line)
        if self._size >= self._max_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._batch:
            return
        text = "\n".join(self._batch) + "\n"
        self._batch, self._size = [], 0
        for stream in self._streams:
            stream.write(text)
            stream.flush()

    def now(self) -> str:
        """ISO 8601 in UTC to the millisecond; the text of the second made once a second."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((now - second) * 1000):03d}+00:00"


class AccessLogMiddleware:
    """Reports every HTTP exchange to the access log once the response is sent: time, client
    address (`remote_addr`'s rule, the rate limits', else the TCP peer), method, path, query
    string (redacted: gql/transport/access_log.py), status, bytes, duration, user agent and
    correlation ID, as one JSON object (JSON-escaped whatever a client sends)."""

    def __init__(self, app: ASGIApp, log: Logger, remote_addr: RemoteAddr | None = None) -> None:
        self.app = app
        self.lines = AccessLines(log)
        self.remote_addr = remote_addr
        # With a logconfig_dict gunicorn reports access logs as enabled even when the access
        # logger is silenced (ACCESS_LOG=false): then skip the bookkeeping altogether.
        self.enabled = log.access_log_enabled and log.access_log.isEnabledFor(logging.INFO)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._flush_at_shutdown(send))
            return
        if scope["type"] != "http" or not self.enabled:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        sent = 0
        correlation_id = "-"

        async def send_and_record(message: Message) -> None:
            nonlocal status, sent, correlation_id
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"x-correlation-id":
                        correlation_id = value.decode("latin-1")
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            self.lines.write(
                {
                    "time": self.lines.now(),
                    "type": "access",
                    **self._request(scope),
                    "status": status,
                    "bytes": sent,
                    "duration_ms": round(elapsed_ms, 2),
                    "correlation_id": correlation_id,
                }
            )

    def _flush_at_shutdown(self, send: Send) -> Send:
        """The last batch is written when the app has shut down: every request is over by
        then, and uvicorn ends the process right after (it raises the SIGTERM it caught
        again), so nothing later in the worker would run."""

        async def send_and_flush(message: Message) -> None:
            if message["type"].startswith("lifespan.shutdown."):
                self.lines.flush()
            await send(message)

        return send_and_flush

    def _request(self, scope: Scope) -> dict[str, str]:
        """What the line says of the request. The query string is redacted: GET carries
        GraphQL variables there."""
        client = scope.get("client")
        peer = client[0] if client else None
        user_agent = "-"
        forwarded_for: list[str] = []
        for name, value in scope.get("headers", ()):
            if name == b"user-agent":
                user_agent = value.decode("latin-1")
            elif name == b"x-forwarded-for":
                forwarded_for.append(value.decode("latin-1"))
        if self.remote_addr is not None:
            peer = self.remote_addr(peer, forwarded_for)
        return {
            "remote_addr": peer or "-",
            "method": scope.get("method", ""),
            "path": scope.get("path", ""),
            "query": redact_query_string(scope.get("query_string", b"").decode("latin-1")),
            "user_agent": user_agent,
        }


class Worker(UvicornWorker):  # type: ignore[misc]
    """uvicorn-worker pinned to uvloop and httptools (a missing one fails at boot rather than
    silently falling back to the slower pure-Python pair), with access logs through gunicorn.

    uvicorn's proxy-header handling is off: on, it rewrites the client address (and scheme)
    from X-Forwarded-For/-Proto of any peer in FORWARDED_ALLOW_IPS (loopback by default)
    before the app runs, so a same-host proxy passing the client's header on would let clients
    pick their rate-limit bucket whatever TRUSTED_PROXIES says. The app reads the header
    itself, only from TRUSTED_PROXIES (gql.transport.ratelimit.client_ip), and so does the
    access log."""

    CONFIG_KWARGS = {
        "loop": "uvloop",
        # httptools, a response's head and body written together (gql/transport/http_protocol.py).
        "http": BatchedWritesHttpToolsProtocol,
        "access_log": False,
        "proxy_headers": False,
    }
    wsgi: ASGIApp  # the app gunicorn loaded (an ASGI one here, whatever the name says)

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.wsgi = AccessLogMiddleware(self.wsgi, self.log, _remote_addr())
        _tune_garbage_collector()


def _remote_addr() -> RemoteAddr | None:
    """client_ip with TRUSTED_PROXIES bound; None without any (the peer it is, and no header
    to read per request). Imported in the worker, after the fork: the master imports this
    module too, and gql.transport.ratelimit brings the app's metrics with it."""
    trusted = get_settings().trusted_proxies
    if not trusted:
        return None
    from gql.transport.ratelimit import client_ip  # noqa: PLC0415

    def remote_addr(peer: str | None, forwarded_for: list[str]) -> str:
        return client_ip(peer, forwarded_for, trusted)

    return remote_addr


def _tune_garbage_collector() -> None:
    """A request allocates about a thousand short-lived containers (rows, objects, dicts), so
    with the default threshold (700) the collector ran once per request and now and then
    walked the whole heap: the schema, SQLAlchemy's and graphql-core's caches. Those are
    frozen out of its reach once loaded, and the young generation collected less often
    (the collector's cost on the order history: 3.5% of CPU before, 1.7% after)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
