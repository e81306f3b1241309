"""Helpers of the edge tests: apps with their own settings, captured JSON log lines, Redis
key prefixes, free ports, and uvicorn/redis-server subprocesses."""

import asyncio
import io
import logging
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
from fastapi import FastAPI
from redis.asyncio import Redis

from core.logging import CorrelationIdFilter, JsonFormatter
from core.settings import Settings
from gql.app import create_app

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")

AppClient = Callable[..., AbstractAsyncContextManager[tuple[FastAPI, httpx.AsyncClient]]]


def edge_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "redis_url": None,
        "db_pool_size": 5,
        "db_max_overflow": 5,
        "rate_limit_enabled": True,
        **overrides,
    }
    return Settings(**values)


@asynccontextmanager
async def app_client(
    database_url: str, **overrides: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    application = create_app(edge_settings(**overrides), database_url=database_url)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield application, client


class LogLines:
    """The JSON lines the service's log handler writes, parsed back."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.addFilter(CorrelationIdFilter())
        self.handler.setFormatter(JsonFormatter())

    @property
    def lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.stream.getvalue().splitlines() if line]


@asynccontextmanager
async def captured_logs(level: int = logging.INFO) -> AsyncIterator[LogLines]:
    logs = LogLines()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(logs.handler)
    root.setLevel(level)
    try:
        yield logs
    finally:
        root.removeHandler(logs.handler)
        root.setLevel(previous)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def unique_prefix() -> str:
    return f"test-edge-{uuid.uuid4().hex[:12]}"


async def delete_prefix(prefix: str, url: str = REDIS_URL) -> None:
    """Our keys only: other test runs share this Redis."""
    redis = Redis.from_url(url)
    try:
        keys = [key async for key in redis.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


async def wait_until_up(url: str, process: subprocess.Popen[bytes], attempts: int = 600) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(attempts):
            if process.poll() is not None:
                raise RuntimeError(f"{process.args} exited with {process.returncode}")
            try:
                if (await client.get(url)).status_code < 500:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not come up")


def start_server(port: int, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """A real uvicorn process serving gql.app:app, configured through the environment."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [
                sys.executable, "-m", "uvicorn", "gql.app:app",
                "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
            ],
            cwd=PROJECT_ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def start_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    return subprocess.Popen(
        [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
