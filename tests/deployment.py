"""A deployment in miniature for the tests: PgBouncer (Debian's package) in front of the test
server, and service instances under plain `gunicorn -c gunicorn.conf.py`, each on a free
loopback port, stopped with everything they started."""

import asyncio
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL, make_url

from tests.edge_support import free_port

PROJECT_ROOT = Path(__file__).resolve().parent.parent
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "gql.app:app"]
STARTUP_TIMEOUT = 60.0
# Variables of the developer's environment that would configure the instances behind the test's
# back (the test sets what it needs).
_SERVICE_VARIABLES = {
    "DATABASE_URL",
    "EVENTS_DATABASE_URL",
    "WEB_CONCURRENCY",
    "BIND",
    "DB_PGBOUNCER",
}


def pgbouncer_binary() -> str:
    """Debian's PgBouncer, or a skip saying why there is none (`make test` installs it)."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).is_file():
        pytest.skip("pgbouncer not installed (`make pgbouncer` installs it, as root)")
    return binary


@dataclass(frozen=True)
class PgBouncer:
    url: str  # the test server's URL with PgBouncer's host and port
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@asynccontextmanager
async def pgbouncer(server_url: str, *, pool_size: int) -> AsyncIterator[PgBouncer]:
    """PgBouncer in transaction mode, as version 1.18 has it (no prepared-statement support;
    on 1.21+ `max_prepared_statements = 0` says the same), with `pool_size` server connections
    per database and user, so many more client connections than that share them."""
    binary = pgbouncer_binary()
    port = free_port()
    directory, command = _pgbouncer_files(binary, make_url(server_url), port, pool_size)
    log = directory / "pgbouncer.log"
    with log.open("wb") as sink:  # its log lines go to stderr
        process = await asyncio.create_subprocess_exec(
            *command, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        await _wait_for_port(port, process, what="pgbouncer", log=log)
        server = make_url(server_url)
        url = server.set(host="127.0.0.1", port=port, query={}).render_as_string(
            hide_password=False
        )
        yield PgBouncer(url=url, log=log)
    finally:
        await _stop(process)
        shutil.rmtree(directory, ignore_errors=True)


def _pgbouncer_files(binary: str, server: URL, port: int, pool_size: int) -> tuple[Path, list[str]]:
    """PgBouncer's folder (config, users) and its command line."""
    # PgBouncer refuses to run as root: it drops to another user (`_unprivileged_user`), so its
    # folder must be readable by that user (pytest's tmp_path is not).
    directory = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    directory.chmod(0o755)
    host = server.query.get("host") or server.host or "127.0.0.1"
    assert isinstance(host, str)
    user = server.username or "postgres"
    (directory / "userlist.txt").write_text(f'"{user}" "{server.password or ""}"\n')
    password = f" password={server.password}" if server.password else ""
    (directory / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={host} port={server.port or 5432} user={user}{password}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {directory / 'userlist.txt'}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\nmin_pool_size = 0\nreserve_pool_size = 0\n"
        "max_client_conn = 500\n"
        "log_connections = 0\nlog_disconnections = 0\n"
    )
    for path in directory.iterdir():
        path.chmod(0o644)
    command = [binary, str(directory / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", _unprivileged_user(host)]
    return directory, command


def _unprivileged_user(host: str) -> str:
    """Who PgBouncer runs as when started by root: the owner of the server's socket folder (the
    embedded server keeps it private to its own user), else Debian's `postgres`."""
    if host.startswith("/"):
        return Path(host).owner()
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "nobody"
    return "postgres"


@dataclass(frozen=True)
class Instance:
    url: str  # http://127.0.0.1:PORT
    log: Path
    process: asyncio.subprocess.Process

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@asynccontextmanager
async def gunicorn_instances(
    count: int, *, env: Mapping[str, str], log_dir: Path
) -> AsyncIterator[list[Instance]]:
    """`count` instances of the service under `gunicorn -c gunicorn.conf.py`, started
    together, each configured by `env` and its own BIND; stopped with SIGTERM (gunicorn's
    graceful shutdown), then killed if they linger."""
    base = {key: value for key, value in os.environ.items() if key not in _SERVICE_VARIABLES}
    instances: list[Instance] = []
    try:
        for number in range(count):
            port = free_port()
            log = log_dir / f"instance-{number}.log"
            with log.open("wb") as sink:
                process = await asyncio.create_subprocess_exec(
                    *GUNICORN,
                    cwd=PROJECT_ROOT,
                    env={**base, **env, "BIND": f"127.0.0.1:{port}"},
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
            instances.append(Instance(f"http://127.0.0.1:{port}", log, process))
        await asyncio.gather(*(_wait_until_serving(instance) for instance in instances))
        yield instances
    finally:
        await asyncio.gather(*(_stop(instance.process) for instance in instances))


async def _wait_until_serving(instance: Instance) -> None:
    async with httpx.AsyncClient(timeout=2) as client, asyncio.timeout(STARTUP_TIMEOUT):
        while True:
            if instance.process.returncode is not None:
                raise RuntimeError(
                    f"gunicorn exited with {instance.process.returncode}:\n{instance.log_text()}"
                )
            try:
                if (await client.get(f"{instance.url}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)


async def _wait_for_port(
    port: int, process: asyncio.subprocess.Process, *, what: str, log: Path
) -> None:
    async with asyncio.timeout(STARTUP_TIMEOUT):
        while True:
            if process.returncode is not None:
                text = await asyncio.to_thread(log.read_text, errors="replace")
                raise RuntimeError(f"{what} exited with {process.returncode}:\n{text}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            async with asyncio.timeout(20):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
