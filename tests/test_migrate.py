"""Issue 15: migrations as a deploy step. `python -m db.migrate` brings a database to head, once
however many instances start it together; the app refuses a database behind the code's head
revision, saying what to run, and serves one a newer version has migrated."""

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from alembic import command
from sqlalchemy import text

from db.embedded import to_async_url
from db.engine import create_db_engine
from db.migrate import SchemaBehind, alembic_config, code_revisions, database_revisions
from gql.app import create_app
from tests.databases import PROJECT_ROOT, DatabaseFactory, libpq_dsn, with_database
from tests.edge_support import captured_logs, edge_settings, free_port

MIGRATE = [sys.executable, "-m", "db.migrate"]
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "gql.app:app"]


@pytest.fixture
async def empty_database(databases: DatabaseFactory) -> AsyncIterator[str]:
    """A database that was never migrated (not cloned from the migrated template)."""
    name = f"{databases.prefix}_empty_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(libpq_dsn(databases.url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = with_database(databases.url, name)
    yield url
    await databases.drop(url)


async def _run(arguments: list[str], database_url: str, **extra: str) -> tuple[int, str]:
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_JSON": "false", **extra}
    process = await asyncio.create_subprocess_exec(
        *arguments,
        cwd=PROJECT_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    return process.returncode or 0, output.decode()


async def _revisions(url: str) -> frozenset[str]:
    engine = create_db_engine(to_async_url(url), edge_settings())
    try:
        return await database_revisions(engine)
    finally:
        await engine.dispose()


async def test_migrate_started_twice_at_once_brings_the_database_to_head_once(
    empty_database: str,
) -> None:
    heads, _ = code_revisions()
    code, output = await _run([*MIGRATE, "--check"], empty_database)
    assert code == 1
    assert output.splitlines()[-1] == (
        "the database is at no revision (never migrated), behind this code's head revision "
        f"{', '.join(sorted(heads))}: run `make migrate` (or `python -m db.migrate`) against "
        "it first, then start the service"
    )
    # Two instances' deploy steps racing: the advisory lock makes the second wait, then find
    # the work done (without it, both would create the same tables and one would fail).
    results = await asyncio.gather(_run(MIGRATE, empty_database), _run(MIGRATE, empty_database))
    assert [code for code, _ in results] == [0, 0], results
    outputs = sorted(output.splitlines()[-1] for _, output in results)
    assert outputs[0].startswith("database already at head") or outputs[0].startswith("migrated")
    assert any(output.startswith("migrated an empty database") for output in outputs), outputs
    assert await _revisions(empty_database) == heads
    code, output = await _run(MIGRATE, empty_database)
    assert code == 0 and "nothing to do" in output, output
    assert (await _run([*MIGRATE, "--check"], empty_database))[0] == 0


async def test_the_app_refuses_a_database_behind_the_code_saying_what_to_run(
    empty_database: str,
) -> None:
    heads, known = code_revisions()
    previous = sorted(known - heads)[-1]
    await asyncio.to_thread(command.upgrade, alembic_config(empty_database), previous)
    app = create_app(edge_settings(), database_url=to_async_url(empty_database))
    with pytest.raises(SchemaBehind) as refused:
        async with app.router.lifespan_context(app):
            pass
    message = str(refused.value)
    assert f"at revision {previous}" in message
    assert "make migrate" in message and "python -m db.migrate" in message


async def test_the_app_serves_a_database_a_newer_version_migrated(database_url: str) -> None:
    """During a rollout the old version keeps serving after the new one's migration ran."""
    engine = create_db_engine(database_url, edge_settings())
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    await engine.dispose()
    app = create_app(edge_settings(), database_url=database_url)
    async with captured_logs() as logs, app.router.lifespan_context(app):
        pass
    [warning] = [line for line in logs.lines if "newer than this code" in line["message"]]
    assert warning["level"] == "WARNING" and "9999_future" in warning["message"]


async def test_gunicorn_refuses_to_serve_an_unmigrated_database(empty_database: str) -> None:
    code, output = await _run(
        GUNICORN, empty_database, WEB_CONCURRENCY="1", BIND=f"127.0.0.1:{free_port()}"
    )
    assert code != 0
    assert "behind this code's head revision" in output and "make migrate" in output, output
