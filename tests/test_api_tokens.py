"""API tokens: the `python -m services.tokens` command end to end, expiry and revocation,
several tokens per user, last-used dates written in batches, and migration 0003 carrying the
tokens of `users.token_hash` over."""

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from alembic import command
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db.migrate import alembic_config
from db.models import ApiToken
from services.auth import (
    NOT_CACHED,
    Actor,
    ActorCache,
    hash_token,
    is_well_formed_token,
    new_token,
    token_prefix,
)
from tests.conftest import GraphQL, StatementCounter, error_codes
from tests.databases import PROJECT_ROOT, DatabaseFactory, libpq_dsn, with_database
from tests.factories import Factory

ME = "{ me { email isAdmin } }"


def tokens_command(database_url: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    """`python -m services.tokens ...` as an operator runs it, against the test database."""
    env = {**os.environ, "DATABASE_URL": database_url, "AUTH_CACHE_SECONDS": "5"}
    return subprocess.run(
        [sys.executable, "-m", "services.tokens", *arguments],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_token_command_issues_lists_and_revokes_tokens(
    database_url: str, gql: GraphQL
) -> None:
    issued = await asyncio.to_thread(
        tokens_command,
        database_url,
        *("issue", "--email", "ops@example.test", "--name", "Ops Robot", "--expires", "90d"),
    )
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    assert token.startswith("bk_api_") and is_well_formed_token(token)
    assert "new customer ops@example.test" in issued.stderr
    assert token not in issued.stderr  # printed once, on stdout only

    body = await gql(ME, token=token)
    assert body["data"]["me"] == {"email": "ops@example.test", "isAdmin": False}

    # A second token for the same user, made an admin.
    second = await asyncio.to_thread(
        tokens_command, database_url, "issue", "--email", "ops@example.test", "--admin"
    )
    assert second.returncode == 0, second.stderr
    second_token = second.stdout.strip()
    assert (await gql(ME, token=second_token))["data"]["me"]["isAdmin"] is True

    listing = await asyncio.to_thread(
        tokens_command, database_url, "list", "--email", "ops@example.test"
    )
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["prefix", "created", "expires", "last", "used", "status"]
    first_line, second_line = lines[1:]
    assert first_line.startswith(token[:20]) and first_line.endswith("active")
    expiry = (datetime.now(UTC) + timedelta(days=90)).strftime("%Y-%m-%d")
    assert expiry in first_line
    assert second_line.startswith(second_token[:20]) and "never" in second_line
    assert token not in listing.stdout

    revoked = await asyncio.to_thread(tokens_command, database_url, "revoke", token[:20])
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in revoked.stdout and "5s" in revoked.stdout
    assert error_codes(await gql(ME, token=token)) == ["UNAUTHENTICATED"]
    assert (await gql(ME, token=second_token))["data"]["me"] is not None

    again = await asyncio.to_thread(tokens_command, database_url, "revoke", token[:20])
    assert again.returncode == 1 and "no live token" in again.stderr
    listing = await asyncio.to_thread(
        tokens_command, database_url, "list", "--email", "ops@example.test"
    )
    assert listing.stdout.splitlines()[1].endswith("revoked")

    unknown = await asyncio.to_thread(
        tokens_command, database_url, "list", "--email", "nobody@example.test"
    )
    assert unknown.returncode == 1 and "no user" in unknown.stderr


def test_the_token_command_refuses_a_malformed_expiry() -> None:
    result = tokens_command(
        "postgresql://unused/none", "issue", "--email", "a@b", "--expires", "soon"
    )
    assert result.returncode == 2 and "not an age" in result.stderr
    # A bare number would be seconds: refused rather than a token dead in 90 s.
    bare = tokens_command("postgresql://unused/none", "issue", "--email", "a@b", "--expires", "90")
    assert bare.returncode == 2 and "give the expiry a unit" in bare.stderr


async def test_expired_and_revoked_tokens_are_refused_while_the_users_others_work(
    factory: Factory, gql: GraphQL
) -> None:
    user, token = await factory.user()
    now = datetime.now(UTC)
    expired = await factory.api_token(user, expires_at=now - timedelta(seconds=1))
    revoked = await factory.api_token(user, revoked_at=now)
    later = await factory.api_token(user, expires_at=now + timedelta(days=1))
    for good in (token, later):
        assert (await gql(ME, token=good))["data"]["me"]["email"] == user.email
    for bad in (expired, revoked):
        body = await gql(ME, token=bad)
        assert error_codes(body) == ["UNAUTHENTICATED"]
        assert body["errors"][0]["message"] == "invalid API token"


def test_a_cached_token_is_trusted_no_longer_than_it_lives() -> None:
    now = [100.0]
    cache = ActorCache(ttl=5, clock=lambda: now[0])
    cache.remember("hash", Actor(user_id=1, is_admin=False), at_most=2)
    now[0] += 2
    assert cache.get("hash") is NOT_CACHED
    cache.remember("expired", Actor(user_id=1, is_admin=False), at_most=-1)
    assert cache.get("expired") is NOT_CACHED


async def test_last_used_dates_are_written_in_one_batch_not_per_request(
    app: FastAPI,
    factory: Factory,
    gql: GraphQL,
    statements: StatementCounter,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    user, first = await factory.user()
    second = await factory.api_token(user)
    unused = await factory.api_token(user)
    statements.reset()
    for token in (first, second, first, second, first):
        assert (await gql(ME, token=token))["data"]["me"] is not None
    assert not [s for s in statements.statements if s.lstrip().upper().startswith("UPDATE")]

    usage = app.state.authenticator.usage
    assert usage.pending == 2
    statements.reset()
    assert await usage.flush(app.state.session_factory) == 2
    await asyncio.sleep(0)
    updates = [s for s in statements.statements if s.lstrip().upper().startswith("UPDATE")]
    assert len(updates) == 1, statements.statements
    assert usage.pending == 0 and await usage.flush(app.state.session_factory) == 0

    async with session_factory() as session:
        result = await session.execute(select(ApiToken.token_hash, ApiToken.last_used_at))
        rows = {row.token_hash: row.last_used_at for row in result}
    assert rows[hash_token(unused)] is None
    for token in (first, second):
        used_at = rows[hash_token(token)]
        assert used_at is not None and datetime.now(UTC) - used_at < timedelta(minutes=1)


async def test_a_flush_never_moves_a_last_used_date_back(
    app: FastAPI, factory: Factory, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    user, _ = await factory.user()
    later = datetime.now(UTC) + timedelta(hours=1)
    async with session_factory() as session, session.begin():
        row = await session.scalar(select(ApiToken).where(ApiToken.user_id == user.id))
        assert row is not None
        row.last_used_at = later
        token_id = row.id
    usage = app.state.authenticator.usage
    usage.record(token_id)
    await usage.flush(app.state.session_factory)
    async with session_factory() as session:
        stored = await session.scalar(select(ApiToken.last_used_at).where(ApiToken.id == token_id))
    assert stored == later


async def _execute(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(libpq_dsn(url))
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


@pytest.fixture
async def empty_database_url(databases: DatabaseFactory) -> AsyncIterator[str]:
    name = f"{databases.prefix}_migration"
    await _execute(databases.url, f'CREATE DATABASE "{name}"')
    url = with_database(databases.url, name)
    yield url
    await databases.drop(url)


async def test_migration_0003_moves_existing_tokens_into_their_table_and_back(
    empty_database_url: str,
) -> None:
    url = empty_database_url
    config = alembic_config(url)
    await asyncio.to_thread(command.upgrade, config, "0002")
    token = "bk_demo_0cf75eac684b24be33020c55d47fa150"
    await _execute(
        url,
        "INSERT INTO users (email, name, token_hash, is_admin) VALUES ($1, $2, $3, true)",
        "admin@example.com",
        "Ada Admin",
        hash_token(token),
    )
    await asyncio.to_thread(command.upgrade, config, "head")

    rows = await _execute(url, "SELECT user_id, token_hash, prefix FROM api_tokens")
    assert [tuple(row) for row in rows] == [
        (1, hash_token(token), "sha256:" + hash_token(token)[:12])
    ]
    columns = {
        row["column_name"]
        for row in await _execute(
            url, "SELECT column_name FROM information_schema.columns WHERE table_name = 'users'"
        )
    }
    assert "token_hash" not in columns and "external_subject" in columns

    # A second token, then back to 0002: the newest live one stays the user's token.
    newer = "bk_api_" + "x" * 40
    await _execute(
        url,
        "INSERT INTO api_tokens (user_id, token_hash, prefix, created_at) "
        "VALUES (1, $1, $2, now() + interval '1 second')",
        hash_token(newer),
        newer[:20],
    )
    await asyncio.to_thread(command.downgrade, config, "0002")
    rows = await _execute(url, "SELECT token_hash FROM users")
    assert [row["token_hash"] for row in rows] == [hash_token(newer)]


def test_prefixes_name_the_kind_and_stay_unique_in_practice() -> None:
    tokens = {new_token() for _ in range(1000)}
    assert all(re.fullmatch(r"bk_api_[A-Za-z0-9_-]{40}", token) for token in tokens)
    assert len({token_prefix(token) for token in tokens}) == 1000
