"""uvicorn's httptools protocol with a response's writes sent together.

uvicorn writes a response's head (status line and headers) when the app sends
`http.response.start`, and its body apart: two `send` system calls and two TCP segments for
every answer, the client woken for each. A GraphQL answer is small and sent whole, head and
body in the same turn of the event loop; so the connection's writes of one turn are kept and
handed to the transport together at the end of that turn (`loop.call_soon`), in order, one
system call. Streams (multipart subscriptions) and WebSockets still leave at the end of each
turn that wrote: nothing waits longer than the loop takes to come back.

uvicorn gives the protocol its transport in `connection_made`, and its request cycles and
WebSocket upgrades write through the protocol's `transport` attribute: that is the one thing
this relies on, pinned by tests/test_http_protocol.py (if a release writes head and body in
one call itself, the pin says so and this module can go)."""

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class TurnBatchedTransport:
    """A transport whose writes of one event-loop turn reach the real one as one write. Every
    other call goes through; `close` and `write_eof` send what is pending first, `abort`
    drops it."""

    __slots__ = ("_inner", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._inner = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        # A copy of a mutable buffer: the caller may reuse it before the turn ends.
        self._pending.append(data if type(data) is bytes else bytes(data))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending or self._inner.is_closing():
            return
        self._inner.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size() + sum(map(len, self._pending))

    def close(self) -> None:
        self._flush()
        self._inner.close()

    def write_eof(self) -> None:
        self._flush()
        self._inner.write_eof()

    def abort(self) -> None:
        self._pending = []
        self._inner.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class BatchedWritesHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through a `TurnBatchedTransport`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        batched = TurnBatchedTransport(cast(asyncio.Transport, transport), self.loop)
        super().connection_made(batched)  # type: ignore[arg-type]
