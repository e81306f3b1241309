"""Production serving: gunicorn.conf.py and its worker (uvloop, httptools, JSON access logs)."""

import asyncio
import io
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import psutil
from gunicorn.config import Config
from gunicorn.glogging import Logger

from core.settings import PROJECT_ROOT
from gql.transport.gunicorn_worker import AccessLogMiddleware

GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "gql.app:app"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _env(**values: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "WEB_CONCURRENCY", "BIND"}
    }
    env.update(values)
    return env


async def _gunicorn_refusal(env: Mapping[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *GUNICORN,
        cwd=PROJECT_ROOT,
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, stderr.decode()


async def test_gunicorn_refuses_several_workers_without_redis() -> None:
    returncode, stderr = await _gunicorn_refusal(
        _env(
            DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
            WEB_CONCURRENCY="2",
            BIND=f"127.0.0.1:{_free_port()}",
        )
    )
    assert returncode != 0
    assert "REDIS_URL is not set" in stderr


async def test_gunicorn_refuses_to_start_without_database_url() -> None:
    returncode, stderr = await _gunicorn_refusal(
        _env(WEB_CONCURRENCY="1", BIND=f"127.0.0.1:{_free_port()}")
    )
    assert returncode != 0
    assert "DATABASE_URL is not set" in stderr


def _access_logger(lines: list[str]) -> Logger:
    """gunicorn's logger, its access lines captured by a handler of its own (not a stream:
    lines go one by one)."""
    config = Config()
    config.set("accesslog", "-")
    log = Logger(config)

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    log.access_log.handlers = [Capture()]
    log.access_log.setLevel(logging.INFO)
    return log


async def test_access_log_lines_stay_json_whatever_the_client_sends() -> None:
    lines: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [(b"x-correlation-id", b"corr-42")],
            }
        )
        await send({"type": "http.response.body", "body": b"hello"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        return None

    scope = {
        "type": "http",
        "method": "POST",
        "path": '/graphql"\n',
        "raw_path": b'/graphql"\n',
        "query_string": b"a=1",
        "http_version": "1.1",
        "client": ("10.1.2.3", 5555),
        "headers": [(b"user-agent", b'evil "agent"\\ \x01')],
    }
    await AccessLogMiddleware(app, _access_logger(lines))(scope, receive, send)

    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["status"] == 201
    assert entry["bytes"] == 5
    assert entry["method"] == "POST"
    assert entry["path"] == '/graphql"\n'
    assert entry["user_agent"] == 'evil "agent"\\ \x01'
    assert entry["remote_addr"] == "10.1.2.3"
    assert entry["correlation_id"] == "corr-42"


def _loaded_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


async def test_gunicorn_serves_the_api_on_uvloop_and_httptools_with_json_access_logs(
    database_url: str,
) -> None:
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        *GUNICORN,
        cwd=PROJECT_ROOT,
        env=_env(
            DATABASE_URL=database_url,
            WEB_CONCURRENCY="1",
            BIND=f"127.0.0.1:{port}",
            ENVIRONMENT="production",
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/graphql"
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(200):
                try:
                    response = await client.post(
                        url, json={"query": "{ products(first: 2) { edges { node { id } } } }"}
                    )
                    break
                except httpx.TransportError:
                    assert process.returncode is None, "gunicorn exited"
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("gunicorn did not answer")
        assert response.status_code == 200
        assert "errors" not in response.json()
        workers = psutil.Process(process.pid).children()
        assert len(workers) == 1
        libraries = _loaded_libraries(workers[0].pid)
        assert "uvloop/loop" in libraries
        assert "httptools/parser/parser" in libraries
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        stdout, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0
    access = [json.loads(line) for line in stdout.decode().splitlines() if line.strip()]
    request = next(line for line in access if line.get("type") == "access")
    assert request["method"] == "POST"
    assert request["path"] == "/graphql"
    assert request["status"] == 200
    assert request["correlation_id"] == response.headers.get("x-correlation-id", "-")


async def test_access_lines_are_written_in_batches_and_at_shutdown() -> None:
    stream = io.StringIO()
    config = Config()
    config.set("accesslog", "-")
    log = Logger(config)
    log.access_log.handlers = [logging.StreamHandler(stream)]
    log.access_log.setLevel(logging.INFO)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        return None

    middleware = AccessLogMiddleware(app, log)
    middleware.lines.interval = 0.05
    scope = {"type": "http", "method": "GET", "path": "/healthz", "headers": []}
    for _ in range(3):
        await middleware(dict(scope), receive, send)
    assert stream.getvalue() == ""  # one write for the batch, not one per line
    await asyncio.sleep(0.1)
    assert [json.loads(line)["status"] for line in stream.getvalue().splitlines()] == [200] * 3

    await middleware(dict(scope), receive, send)
    await middleware({"type": "lifespan"}, receive, send)  # the app shuts down: written now
    assert len(stream.getvalue().splitlines()) == 4
