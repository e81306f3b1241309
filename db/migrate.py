"""Migrations as a deploy step: `python -m db.migrate` (`make migrate`) brings the database to
the code's head revision before a new version rolls out, and the app checks at startup that it
is there (`require_head`). Also used by `make run`, the tests and the bench."""

import argparse
import asyncio
import logging
import sys
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Held by `db/migrations/env.py` for the migration's transaction (PostgreSQL runs them all in
# one): a second `db.migrate` started meanwhile waits, then finds the database at head and does
# nothing. Transaction-scoped, so it works through PgBouncer in transaction mode too.
ADVISORY_LOCK_KEY = 0x626F6F6B696E67  # "booking"

MIGRATE_COMMAND = "`make migrate` (or `python -m db.migrate`)"


class SchemaBehind(RuntimeError):
    """The database is at an older revision than this code needs."""


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_to_head(url: str) -> None:
    """Bring the database at `url` to the newest revision (nothing to do when it is there).
    Synchronous: it runs its own event loop, so call it before the server's loop starts or
    through `upgrade_to_head_async`."""
    command.upgrade(alembic_config(url), "head")


async def upgrade_to_head_async(url: str) -> None:
    await asyncio.to_thread(upgrade_to_head, url)


@cache
def code_revisions() -> tuple[frozenset[str], frozenset[str]]:
    """(the head revisions, every revision) of the migrations shipped with this code. Read from
    the migration files once per process."""
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    every = frozenset(revision.revision for revision in script.walk_revisions())
    return frozenset(script.get_heads()), every


async def database_revisions(engine: AsyncEngine) -> frozenset[str]:
    """The revisions recorded in the database (none before its first migration)."""
    async with engine.connect() as connection:
        if await connection.scalar(text("SELECT to_regclass('alembic_version')")) is None:
            return frozenset()
        rows = await connection.execute(text("SELECT version_num FROM alembic_version"))
        return frozenset(row[0] for row in rows)


def compare_with_code(found: frozenset[str]) -> str | None:
    """Refuse (SchemaBehind) database revisions `found` that are behind the code's head, with
    what to run. A revision this code does not know is a newer one (the next version migrated,
    this one still runs during the rollout, as migrations are written to allow): accepted, and
    said so in the returned warning."""
    heads, known = code_revisions()
    if found == heads:
        return None
    unknown = found - known
    if unknown:
        return (
            f"the database is at revision {', '.join(sorted(unknown))}, newer than this code "
            f"knows (its head: {', '.join(sorted(heads))}): serving, as during a rollout"
        )
    at = f"revision {', '.join(sorted(found))}" if found else "no revision (never migrated)"
    raise SchemaBehind(
        f"the database is at {at}, behind this code's head revision "
        f"{', '.join(sorted(heads))}: run {MIGRATE_COMMAND} against it first, "
        "then start the service"
    )


async def require_head(engine: AsyncEngine, *, wait: float) -> None:
    """At startup: refuse (SchemaBehind, the engine disposed of) a database behind the code's
    head revision; log a newer one. Two small queries, once per process. A database that does
    not answer within `wait` seconds is not checked, only logged: the service starts as it always
    has during an outage (503s, not ready) rather than not at all."""
    try:
        async with asyncio.timeout(wait):
            found = await database_revisions(engine)
    except (OSError, SQLAlchemyError, TimeoutError) as error:
        logger.warning("database revision not checked: the database did not answer (%r)", error)
        return
    try:
        warning = compare_with_code(found)
    except SchemaBehind:
        await engine.dispose()
        raise
    if warning:
        logger.warning(warning)


def main(argv: list[str] | None = None) -> int:
    """`python -m db.migrate`: DATABASE_URL's database (else the embedded one of `make run`)
    to head. Idempotent; safe to start on several machines at once."""
    from core.logging import configure_logging  # noqa: PLC0415
    from core.settings import get_settings  # noqa: PLC0415
    from db.embedded import resolve_database_url  # noqa: PLC0415
    from db.engine import create_db_engine  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m db.migrate", description=main.__doc__)
    parser.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 if the database is behind the code's head revision",
    )
    arguments = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    url = resolve_database_url(settings.database_url, settings.data_dir)

    async def revisions() -> frozenset[str]:
        engine = create_db_engine(url, settings)
        try:
            return await database_revisions(engine)
        finally:
            await engine.dispose()

    before = asyncio.run(revisions())
    if arguments.check:
        try:
            warning = compare_with_code(before)
        except SchemaBehind as behind:
            print(behind)
            return 1
        print(warning or f"database at head ({', '.join(sorted(before))})")
        return 0
    upgrade_to_head(url)
    after = asyncio.run(revisions())
    if before == after:
        print(f"database already at head ({', '.join(sorted(after))}): nothing to do")
    else:
        print(f"migrated {', '.join(sorted(before)) or 'an empty database'} -> "
              f"{', '.join(sorted(after))}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
