"""The embedded local PostgreSQL (pgserver) used when no DATABASE_URL is configured."""

import json
import logging
import os
from pathlib import Path
from typing import Any

import pgserver
from pgserver.postgres_server import PostgresServer
from sqlalchemy.engine import make_url

logger = logging.getLogger(__name__)

# Handles kept alive for the life of the process: pgserver stops the server when the last
# handle is cleaned up (`stop_embedded_postgres`, else at exit).
_servers: dict[Path, Any] = {}

# pgserver's own record of the processes holding a handle on a data folder, and the
# inter-process lock it reads and writes it under (pinned by tests/test_embedded_postgres.py).
HANDLES_FILE = ".handle_pids.json"


def to_async_url(url: str) -> str:
    """Any PostgreSQL URL (libpq style or SQLAlchemy style) rewritten for the asyncpg driver."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def start_embedded_postgres(data_dir: Path, *, database: str = "booking") -> str:
    """Start (or join) the embedded PostgreSQL in `data_dir` and return an asyncpg URL to
    `database`, creating that database on first use."""
    pgdata = (data_dir / "pg").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = _servers.get(pgdata)
    if server is None:
        logger.info("starting embedded PostgreSQL in %s", pgdata)
        forget_dead_handles(pgdata)
        server = pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
        _servers[pgdata] = server
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
    return to_async_url(server.get_uri(database))


def stop_embedded_postgres() -> None:
    """Give up this process's handles now; the last process to give one up stops the server.
    pgserver does this at exit, which a process ended by a signal's default action skips
    (uvicorn re-raises the SIGTERM it shut down on), so `make run` calls this itself."""
    while _servers:
        _, server = _servers.popitem()
        server.cleanup()


def forget_dead_handles(pgdata: Path) -> None:
    """Drop the processes that died holding a handle from pgserver's list. pgserver stops the
    server when the last listed process leaves, so one killed before it could leave (SIGKILL,
    the OOM killer, a crash) would keep the server from ever being stopped again; and a file
    cut short mid-write (a full disk) would fail every start. Under pgserver's lock, so a
    process starting meanwhile is not lost from the list."""
    path = pgdata / HANDLES_FILE
    with PostgresServer._lock:
        try:
            listed = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (ValueError, OSError):
            listed = "unreadable"
        pids = listed if isinstance(listed, list) else []
        alive = [pid for pid in pids if isinstance(pid, int) and _is_alive(pid)]
        if alive != listed:
            logger.info("embedded PostgreSQL: forgetting handles %s, keeping %s", listed, alive)
            path.write_text(json.dumps(alive))


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def resolve_database_url(database_url: str | None, data_dir: Path) -> str:
    """The configured database, or the embedded one when none is configured."""
    if database_url:
        return to_async_url(database_url)
    return start_embedded_postgres(data_dir)
