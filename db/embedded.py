"""The embedded local PostgreSQL (pgserver) used when no DATABASE_URL is configured."""

import logging
from pathlib import Path
from typing import Any

import pgserver
from sqlalchemy.engine import make_url

logger = logging.getLogger(__name__)

# Handles kept alive for the life of the process: pgserver stops the server when the last
# handle is cleaned up at exit.
_servers: dict[Path, Any] = {}


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
        server = pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
        _servers[pgdata] = server
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
    return to_async_url(server.get_uri(database))


def resolve_database_url(database_url: str | None, data_dir: Path) -> str:
    """The configured database, or the embedded one when none is configured."""
    if database_url:
        return to_async_url(database_url)
    return start_embedded_postgres(data_dir)
