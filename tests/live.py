"""Real servers for the tests that need a socket: the app under uvicorn in a thread, Node
programs as subprocesses, each on a free loopback port, and npm packages installed on demand."""

import asyncio
import hashlib
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

STARTUP_TIMEOUT = 60.0
NPM_STAMP = ".npm-ci-lock-sha256"


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on a free 127.0.0.1 port (in a thread with its own event
    loop, as a separate process would) and yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Bound here, not by uvicorn, so there is no window in which another run takes the port.
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, loop="asyncio", lifespan="on", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        async with asyncio.timeout(STARTUP_TIMEOUT):
            while not server.started:
                if not thread.is_alive():
                    raise RuntimeError("uvicorn exited during startup")
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 30)
        sock.close()


def require_node() -> None:
    """Skip (saying why) where Node.js or npm are not installed."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: the federation gateway runs on Node")


def npm_ci(directory: Path) -> None:
    """`npm ci` in `directory` unless its node_modules already match its package-lock.json
    (a stamp holds the lock's hash), so repeated test runs do not reinstall."""
    lock_hash = hashlib.sha256((directory / "package-lock.json").read_bytes()).hexdigest()
    stamp = directory / "node_modules" / NPM_STAMP
    if stamp.is_file() and stamp.read_text().strip() == lock_hash:
        return
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"],
        cwd=directory,
        check=True,
    )
    stamp.write_text(lock_hash + "\n")


class NodeProgram:
    """A Node script that prints `READY <url>` once it listens."""

    def __init__(self, process: asyncio.subprocess.Process, output: Path, url: str) -> None:
        self.process = process
        self.output = output
        self.url = url

    def log(self) -> str:
        return self.output.read_text(errors="replace")


@asynccontextmanager
async def node_program(
    script: Path, *, env: dict[str, str], log_dir: Path
) -> AsyncIterator[NodeProgram]:
    output = log_dir / f"{script.stem}.log"
    with output.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            "node",
            script.name,
            cwd=script.parent,
            env={**os.environ, **env},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        url = await _ready_url(process, output)
        yield NodeProgram(process, output, url)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


async def _ready_url(process: asyncio.subprocess.Process, output: Path) -> str:
    async with asyncio.timeout(STARTUP_TIMEOUT):
        while True:
            log = await asyncio.to_thread(output.read_text, errors="replace")
            for line in log.splitlines():
                if line.startswith("READY "):
                    return line.removeprefix("READY ").strip()
            if process.returncode is not None:
                raise RuntimeError(f"{output.stem} exited:\n{log}")
            await asyncio.sleep(0.05)
