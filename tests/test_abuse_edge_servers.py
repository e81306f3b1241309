"""The servers we ship, run for real (`make run`'s `gql.transport.serve` and gunicorn with
`gunicorn.conf.py`): whose X-Forwarded-For they believe, what their access logs keep of a
query string, and which production settings they refuse to start with (issue 13: M4, L3, L4)."""

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import asyncpg
import httpx
import pytest

from core.settings import Settings
from gql.app import create_app
from gql.transport.access_log import redact_query_string
from tests.databases import libpq_dsn
from tests.edge_support import (
    PROJECT_ROOT,
    REDIS_URL,
    delete_prefix,
    free_port,
    stop,
    unique_prefix,
    wait_until_up,
)

Kind = Literal["serve", "gunicorn"]
KINDS: list[Kind] = ["serve", "gunicorn"]
COMMANDS: dict[Kind, list[str]] = {
    "serve": [sys.executable, "-m", "gql.transport.serve"],
    "gunicorn": [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "gql.app:app"],
}
# Environment variables that would let the test runner's own configuration leak into a server.
FOREIGN = {name.upper() for name in Settings.model_fields} | {"FORWARDED_ALLOW_IPS"}
LIMIT = 3
TYPENAME = {"query": "{ __typename }"}


@dataclass
class Server:
    url: str
    process: "subprocess.Popen[bytes]"
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _environment(**values: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in FOREIGN}
    env.update(values)
    return env


@asynccontextmanager
async def serving(
    kind: Kind, database_url: str, log_dir: Path, **settings: str
) -> AsyncIterator[Server]:
    """One server process on a free loopback port, rate limits on (LIMIT a minute per caller)
    in a Redis key prefix of its own; stopped (logs flushed) before the block's end returns."""
    port = free_port()
    prefix = unique_prefix()
    env = _environment(
        DATABASE_URL=database_url,
        REDIS_URL=REDIS_URL,
        REDIS_KEY_PREFIX=prefix,
        RATE_LIMIT_DEFAULT=f"{LIMIT}/minute",
        HOST="127.0.0.1",
        PORT=str(port),
        BIND=f"127.0.0.1:{port}",
        WEB_CONCURRENCY="1",
        AUTH_CACHE_SECONDS="0",
        **settings,
    )
    log = log_dir / f"{kind}-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(  # noqa: ASYNC220 (wait_until_up and stop take a Popen)
            COMMANDS[kind], cwd=PROJECT_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        await wait_until_up(f"{server.url}/healthz", process)
        yield server
    finally:
        await asyncio.to_thread(stop, process)
        await delete_prefix(prefix)


async def _statuses(server: Server, forwarded_for: list[str]) -> list[int]:
    """One anonymous request per X-Forwarded-For value, in order."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        return [
            (
                await client.post("/graphql", json=TYPENAME, headers={"X-Forwarded-For": hop})
            ).status_code
            for hop in forwarded_for
        ]


def _access_lines(server: Server) -> list[dict[str, Any]]:
    """gunicorn's access lines (JSON objects on stdout)."""
    lines = []
    for text in server.output().splitlines():
        if text.startswith("{"):
            entry = json.loads(text)
            if entry.get("type") == "access":
                lines.append(entry)
    return lines


# M4: X-Forwarded-For is believed only from TRUSTED_PROXIES, in every server we ship.


@pytest.mark.parametrize("kind", KINDS)
async def test_a_loopback_client_cannot_pick_its_bucket_with_x_forwarded_for(
    kind: Kind, database_url: str, tmp_path: Path
) -> None:
    """No TRUSTED_PROXIES: a same-host proxy passing on the client's header (or the client
    itself, from loopback) must not spread requests over buckets of made-up addresses. uvicorn's
    own proxy-header handling believed loopback (its FORWARDED_ALLOW_IPS default) before the
    app's TRUSTED_PROXIES rule ever ran."""
    spoofed = [f"203.0.113.{n}" for n in range(1, LIMIT + 3)]
    async with serving(kind, database_url, tmp_path, TRUSTED_PROXIES="") as server:
        statuses = await _statuses(server, spoofed)
    assert statuses == [200] * LIMIT + [429, 429]
    if kind == "gunicorn":  # the access log names the peer too, not the made-up address
        addresses = {line["remote_addr"] for line in _access_lines(server)}
        assert addresses == {"127.0.0.1"}


@pytest.mark.parametrize("kind", KINDS)
async def test_x_forwarded_for_is_believed_from_a_trusted_proxy(
    kind: Kind, database_url: str, tmp_path: Path
) -> None:
    """TRUSTED_PROXIES=127.0.0.1: the header names the caller, one bucket per client."""
    client, other = "203.0.113.7", "198.51.100.9"
    async with serving(kind, database_url, tmp_path, TRUSTED_PROXIES="127.0.0.1") as server:
        statuses = await _statuses(server, [client] * (LIMIT + 1) + [other])
    assert statuses == [200] * LIMIT + [429, 200]
    if kind == "gunicorn":
        addresses = [line["remote_addr"] for line in _access_lines(server)]
        assert addresses.count(client) == LIMIT + 1
        assert addresses.count(other) == 1


async def test_a_trailing_slash_is_not_redirected_to_a_url_built_from_the_scheme(
    database_url: str, tmp_path: Path
) -> None:
    """Proxy headers are off, so behind a TLS proxy the scheme the app sees is `http`: the
    app must build no absolute URL from it. Starlette's trailing-slash redirect was the one
    place (`307 Location: http://host/graphql`, a downgrade for an https client)."""
    async with (
        serving("gunicorn", database_url, tmp_path) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        response = await client.get("/graphql/", headers={"X-Forwarded-Proto": "https"})
    assert response.status_code == 404
    assert "location" not in response.headers


# L3: GraphQL variables (and query text) sent by GET never reach the access log.

SECRET_VARIABLE = "alice.secret"  # percent-encoding leaves it as it is
SECRET_LITERAL = "bob.secret"
GET_PARAMS = {
    "query": f'query Find($email: String) {{ __typename }} # "{SECRET_LITERAL}@example.com"',
    "variables": json.dumps({"email": f"{SECRET_VARIABLE}@example.com", "note": "call me"}),
    "operationName": "Find",
}


@pytest.mark.parametrize("kind", KINDS)
async def test_the_access_log_carries_no_graphql_variables(
    kind: Kind, database_url: str, tmp_path: Path
) -> None:
    async with (
        serving(kind, database_url, tmp_path) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as client,
    ):
        response = await client.get("/graphql", params=GET_PARAMS)
        assert response.status_code in (200, 400)
    output = server.output()
    assert SECRET_VARIABLE not in output
    assert SECRET_LITERAL not in output
    if kind == "gunicorn":
        (line,) = [entry for entry in _access_lines(server) if entry["path"] == "/graphql"]
        assert line["method"] == "GET"
        assert line["query"] == "query=redacted&variables=redacted&operationName=Find"
    else:
        lines = [text for text in output.splitlines() if "GET /graphql?" in text]
        assert len(lines) == 1
        assert "query=redacted&variables=redacted&operationName=Find" in lines[0]


@pytest.mark.parametrize(
    ("query", "logged"),
    [
        ("", ""),
        ("operationName=Find", "operationName=Find"),
        ("variables=%7B%22e%22%3A1%7D&operationName=A_1", "variables=redacted&operationName=A_1"),
        # An operation name that is not a GraphQL name is data smuggled in a name.
        ("operationName=alice%40example.com", "operationName=redacted"),
        ("vari%61bles=%7B%7D", "variables=redacted"),
        ("extensions=%7B%22persistedQuery%22%3A1%7D", "extensions=redacted"),
        ("alice%40example.com=1&query", "redacted&query"),
        ("a=1;variables=2", "redacted"),
        ("documentId=sha256%3Aab12&variables=1", "documentId=sha256%3Aab12&variables=redacted"),
        ("documentId=alice%40example.com", "documentId=redacted"),
    ],
)
def test_the_redaction_rule(query: str, logged: str) -> None:
    assert redact_query_string(query) == logged


# L4: production refuses demo seeding and unsafe switches, at start, saying why.


async def _user_count(database_url: str) -> int:
    connection = await asyncpg.connect(libpq_dsn(database_url))
    try:
        count: int = await connection.fetchval("SELECT count(*) FROM users")
        return count
    finally:
        await connection.close()


async def _run(command: list[str], env: dict[str, str], seconds: float) -> tuple[int, str]:
    """Exit status and output (stdout and stderr) of a command expected to exit by itself;
    one still running after `seconds` is killed with its whole process group (a gunicorn
    master's workers too, which would otherwise keep the output pipe open)."""
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=PROJECT_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=seconds)
    except TimeoutError:
        os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        raise AssertionError(f"{command} was still running after {seconds} s") from None
    return process.returncode or 0, output.decode(errors="replace")


async def test_demo_seeding_is_refused_in_production(database_url: str) -> None:
    """Demo users' tokens are published in the README: an admin anyone can use."""
    command = [sys.executable, "-m", "db.seed", "--users", "3", "--products", "2", "--orders", "0"]
    env = _environment(DATABASE_URL=database_url, ENVIRONMENT="production")
    returncode, output = await _run(command, env, seconds=60)
    assert returncode != 0
    assert "ENVIRONMENT=production" in output
    assert await _user_count(database_url) == 0


UNSAFE: list[tuple[dict[str, Any], str]] = [
    ({"rate_limit_enabled": False}, "RATE_LIMIT_ENABLED"),
    ({"redis_url": REDIS_URL}, "RATE_LIMIT_FAIL_OPEN"),  # fail-open, never said so
    ({"trusted_proxies": "0.0.0.0/0"}, "TRUSTED_PROXIES"),
    ({"trusted_proxies": "10.0.0.1,::/0"}, "TRUSTED_PROXIES"),
]


@pytest.mark.parametrize(("values", "variable"), UNSAFE)
def test_the_app_refuses_unsafe_production_settings(
    values: dict[str, Any], variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RATE_LIMIT_FAIL_OPEN", raising=False)
    settings = Settings(**{"environment": "production", "redis_url": None, **values})
    with pytest.raises(RuntimeError, match=variable):
        create_app(settings, database_url="postgresql://nobody@127.0.0.1:1/none")
    # The same switches are fine outside production (tests, a laptop).
    assert Settings(**{**values, "environment": "development"}).production_problems() == []


@pytest.mark.parametrize("fail_open", [True, False])
def test_production_accepts_a_fail_open_choice_made_explicitly(
    fail_open: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RATE_LIMIT_FAIL_OPEN", raising=False)
    settings = Settings(
        environment="production",
        redis_url=REDIS_URL,
        rate_limit_fail_open=fail_open,
        trusted_proxies="10.0.0.0/8",
    )
    assert settings.production_problems() == []
    create_app(settings, database_url="postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("RATE_LIMIT_FAIL_OPEN", str(fail_open).lower())  # the usual way
    assert Settings(environment="production", redis_url=REDIS_URL).production_problems() == []


async def test_gunicorn_refuses_unsafe_production_settings_before_any_worker() -> None:
    env = _environment(
        ENVIRONMENT="production",
        DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
        REDIS_URL=REDIS_URL,
        WEB_CONCURRENCY="1",
        BIND=f"127.0.0.1:{free_port()}",
        RATE_LIMIT_ENABLED="false",
        TRUSTED_PROXIES="0.0.0.0/0",
    )
    returncode, output = await _run(COMMANDS["gunicorn"], env, seconds=20)
    assert returncode != 0
    assert "RATE_LIMIT_ENABLED" in output
    assert "TRUSTED_PROXIES" in output  # every problem at once, not one per attempt
    assert "Booting worker" not in output
