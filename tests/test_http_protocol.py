"""The production HTTP protocol (gql/transport/http_protocol.py) against uvicorn's own, on a
transport that records what it is given: the same bytes, in the same order, in fewer writes.
The first test pins what the module relies on and exists for: uvicorn writes a response's head
and body apart."""

import asyncio
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gql.transport.gunicorn_worker import Worker
from gql.transport.http_protocol import BatchedWritesHttpToolsProtocol

Scope = dict[str, Any]


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed_after: int | None = None  # how many writes were made when it closed

    def write(self, data: Any) -> None:
        assert self.closed_after is None, "written after close"
        self.writes.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def is_closing(self) -> bool:
        return self.closed_after is not None

    def close(self) -> None:
        if self.closed_after is None:
            self.closed_after = len(self.writes)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def answer(scope: Scope, receive: Any, send: Any) -> None:
    """A GraphQL-like answer: head and whole body in one turn of the loop."""
    assert scope["type"] == "http"
    body = b'{"data":{"ok":true}}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"20")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def stream(scope: Scope, receive: Any, send: Any) -> None:
    """A multipart-like stream: parts sent turns apart."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for part in (b"one", b"two", b"three"):
        await send({"type": "http.response.body", "body": part, "more_body": True})
        for _ in range(3):
            await asyncio.sleep(0)
    await send({"type": "http.response.body", "body": b""})


async def served(
    protocol_class: type[HttpToolsProtocol], app: Any, request: bytes
) -> RecordingTransport:
    config = Config(app=app, lifespan="off", date_header=False, server_header=False)
    config.load()
    loop = asyncio.get_running_loop()
    protocol = protocol_class(config, ServerState(), {}, loop)
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    for _ in range(50):
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    return transport


GET = b"GET /graphql HTTP/1.1\r\nHost: t\r\n\r\n"
GET_AND_CLOSE = b"GET /graphql HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


async def test_uvicorn_writes_a_responses_head_and_body_apart() -> None:
    plain = await served(HttpToolsProtocol, answer, GET)
    assert len(plain.writes) == 2
    assert plain.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert plain.writes[0].endswith(b"\r\n\r\n")
    assert plain.writes[1] == b'{"data":{"ok":true}}'


async def test_a_response_leaves_in_one_write_with_the_same_bytes() -> None:
    plain = await served(HttpToolsProtocol, answer, GET)
    batched = await served(BatchedWritesHttpToolsProtocol, answer, GET)
    assert batched.writes == [b"".join(plain.writes)]


async def test_a_closing_connection_sends_what_is_pending_before_it_closes() -> None:
    plain = await served(HttpToolsProtocol, answer, GET_AND_CLOSE)
    batched = await served(BatchedWritesHttpToolsProtocol, answer, GET_AND_CLOSE)
    assert plain.closed_after == 2
    assert batched.writes == [b"".join(plain.writes)]
    assert batched.closed_after == 1


async def test_a_stream_leaves_part_by_part_in_order() -> None:
    plain = await served(HttpToolsProtocol, stream, GET)
    batched = await served(BatchedWritesHttpToolsProtocol, stream, GET)
    assert b"".join(batched.writes) == b"".join(plain.writes)
    # Not held back until the end: each part leaves in the turn it was sent.
    assert len(batched.writes) == len(plain.writes) - 1  # only the head joined its first part
    assert batched.writes[-1] == plain.writes[-1] == b"0\r\n\r\n"


def test_the_production_worker_serves_with_the_batched_protocol() -> None:
    assert Worker.CONFIG_KWARGS["http"] is BatchedWritesHttpToolsProtocol


@pytest.mark.parametrize("data", [bytearray(b"abc"), memoryview(b"abc")])
async def test_a_mutable_buffer_is_copied_when_written(data: Any) -> None:
    from gql.transport.http_protocol import TurnBatchedTransport  # noqa: PLC0415

    inner = RecordingTransport()
    batched = TurnBatchedTransport(inner, asyncio.get_running_loop())
    batched.write(data)
    if isinstance(data, bytearray):
        data[0] = ord("x")
    await asyncio.sleep(0)
    assert inner.writes == [b"abc"]
