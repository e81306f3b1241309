"""Issue 15: the embedded PostgreSQL of `make run` lives exactly as long as its users. SIGTERM
(not only Ctrl-C) stops it with the server, and handles left behind by processes that died
holding one (or a file cut short) never keep the next run from starting, or from stopping it."""

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pgserver.postgres_server import PostgresServer

from db.embedded import HANDLES_FILE, forget_dead_handles
from tests.deployment import PROJECT_ROOT
from tests.edge_support import free_port

SERVE = [sys.executable, "-m", "gql.transport.serve"]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: as root, pgserver runs PostgreSQL as its own user, who must be
    # able to reach the folder.
    directory = Path(tempfile.mkdtemp(prefix="embedded-"))
    directory.chmod(0o755)
    yield directory
    leftover = _postmaster_pid(directory)
    if leftover is not None and _alive(leftover):  # a failed test's: fast shutdown
        os.kill(leftover, signal.SIGINT)
    shutil.rmtree(directory, ignore_errors=True)


def _postmaster_pid(data_dir: Path) -> int | None:
    pid_file = data_dir / "pg" / "postmaster.pid"
    if not pid_file.exists():
        return None
    return int(pid_file.read_text().splitlines()[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _gone(pid: int) -> bool:
    """Whether `pid` ends within a few seconds: PostgreSQL removes its pid file (which
    `pg_ctl stop` waits for) just before its process ends."""
    for _ in range(100):
        if not _alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


async def _serve_then_sigterm(data_dir: Path) -> tuple[int, int]:
    """`make run`'s program on `data_dir` until it answers, then SIGTERM: (its exit code, the
    PostgreSQL it ran on)."""
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "HOST", "PORT", "DATA_DIR"}
    }
    env.update(
        DATA_DIR=str(data_dir), PORT=str(port), SEED_USERS="3", SEED_PRODUCTS="5", SEED_ORDERS="5"
    )
    log = data_dir / "serve.log"
    with log.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(
            *SERVE, cwd=PROJECT_ROOT, env=env, stdout=sink, stderr=sink
        )
    try:
        async with httpx.AsyncClient() as client, asyncio.timeout(90):
            while True:
                assert process.returncode is None, log.read_text()
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.2)
        postgres = _postmaster_pid(data_dir)
        assert postgres is not None and _alive(postgres)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return code, postgres


async def test_sigterm_stops_make_run_and_its_embedded_postgres(data_dir: Path) -> None:
    code, postgres = await _serve_then_sigterm(data_dir)
    assert code == 128 + signal.SIGTERM
    assert await _gone(postgres)
    assert json.loads((data_dir / "pg" / HANDLES_FILE).read_text()) == []

    # A run that died holding its handle (SIGKILL) left its pid listed; another left the file
    # cut short. Neither keeps the next run from starting, nor from stopping the server.
    dead = await asyncio.create_subprocess_exec("true")
    await dead.wait()
    for leftover in (json.dumps([dead.pid]), "[12"):
        (data_dir / "pg" / HANDLES_FILE).write_text(leftover)
        code, postgres = await _serve_then_sigterm(data_dir)
        assert code == 128 + signal.SIGTERM
        assert await _gone(postgres)


def test_forgetting_dead_handles_keeps_the_living(tmp_path: Path) -> None:
    """And pins what it relies on in pgserver: the file's name and the lock it is written
    under (db/embedded.py)."""
    assert hasattr(PostgresServer._lock, "acquire")
    assert HANDLES_FILE in Path(sys.modules[PostgresServer.__module__].__file__ or "").read_text()
    handles = tmp_path / HANDLES_FILE
    handles.write_text(json.dumps([os.getpid(), 2**22 + 1]))  # beyond Linux's pid_max
    forget_dead_handles(tmp_path)
    assert json.loads(handles.read_text()) == [os.getpid()]
    handles.write_text("")
    forget_dead_handles(tmp_path)
    assert json.loads(handles.read_text()) == []
    handles.unlink()
    forget_dead_handles(tmp_path)  # no file: nothing to do
    assert not handles.exists()
