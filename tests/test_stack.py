"""Issue 15: `make stack` (`python -m stack`) brings the deployment up on this machine, serves
through HAProxy from every instance, and leaves no process behind on SIGTERM."""

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deployment import PROJECT_ROOT, pgbouncer_binary
from tests.edge_support import REDIS_URL, delete_prefix, free_port


@pytest.fixture
def data_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="stack-"))  # readable by PgBouncer's user
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_the_stack_serves_through_haproxy_and_stops_whole(
    database_url: str, data_dir: Path
) -> None:
    pgbouncer_binary()
    if shutil.which("haproxy") is None and shutil.which("/usr/sbin/haproxy") is None:
        pytest.skip("haproxy not installed (`make haproxy` installs it, as root)")
    port = free_port()
    prefix = f"test-stack-{uuid.uuid4().hex[:12]}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STACK_")},
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": prefix,
        "DATA_DIR": str(data_dir),
        "STACK_PORT": str(port),
        "STACK_INSTANCES": "2",
        "ACCESS_LOG": "false",
    }
    output = data_dir / "stack.out"
    with output.open("wb") as sink:
        stack = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "stack", cwd=PROJECT_ROOT, env=env, stdout=sink, stderr=sink
        )
    try:
        async with asyncio.timeout(120):
            while "Ctrl-C" not in output.read_text():
                assert stack.returncode is None, output.read_text()
                await asyncio.sleep(0.2)
        parts = {int(pid) for pid in json.loads((data_dir / "stack" / "running.json").read_text())}
        assert len(parts) == 5  # PgBouncer, 2 instances, the worker, HAProxy
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            answers = [
                await client.post(
                    "/graphql", json={"query": "{ products(first: 1) { edges { cursor } } }"}
                )
                for _ in range(6)
            ]
            assert [a.status_code for a in answers] == [200] * 6, answers[0].text
            ready = await client.get("/readyz")
        assert ready.status_code == 200
        stack.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            assert await stack.wait() == 0, output.read_text()
        assert [pid for pid in parts if _alive(pid)] == []
        assert not (data_dir / "stack" / "running.json").exists()
    finally:
        if stack.returncode is None:
            stack.kill()
            await stack.wait()
        await delete_prefix(prefix)
