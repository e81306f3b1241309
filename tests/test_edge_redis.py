"""The edge with real Redis: limits shared by separate server processes, persisted queries
shared too, and a Redis that goes away (fail open, warned, not ready; or fail closed: 503)."""

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from core.redis import RedisCircuit, create_redis
from gql.transport.ratelimit import RateLimiter
from tests.conftest import error_codes
from tests.edge_support import (
    REDIS_URL,
    app_client,
    captured_logs,
    delete_prefix,
    edge_settings,
    free_port,
    start_redis,
    start_server,
    stop,
    unique_prefix,
    wait_until_up,
)


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    name = unique_prefix()
    yield name
    await delete_prefix(name)


async def test_two_server_processes_enforce_one_combined_limit(
    database_url: str, prefix: str, tmp_path: Path
) -> None:
    limit = 5
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": prefix,
        "RATE_LIMIT_DEFAULT": f"{limit}/minute",
        "ENVIRONMENT": "test",
        "LOG_LEVEL": "WARNING",
        "DB_POOL_SIZE": "2",
    }
    ports = [free_port(), free_port()]
    servers = [start_server(port, env, tmp_path / f"server{n}.log") for n, port in enumerate(ports)]
    try:
        await asyncio.gather(
            *(
                wait_until_up(f"http://127.0.0.1:{port}/healthz", s)
                for port, s in zip(ports, servers, strict=True)
            )
        )
        async with httpx.AsyncClient() as client:
            # All at once, half to each process: the count is one atomic script in Redis.
            responses = await asyncio.gather(
                *(
                    client.post(
                        f"http://127.0.0.1:{ports[n % 2]}/graphql",
                        json={"query": "{ __typename }"},
                    )
                    for n in range(2 * limit)
                )
            )
            ready = await client.get(f"http://127.0.0.1:{ports[1]}/readyz")
        statuses = [response.status_code for response in responses]
        assert statuses.count(200) == limit, statuses
        assert statuses.count(429) == limit, statuses
        refused = [r for r in responses if r.status_code == 429]
        assert all(error_codes(r.json()) == ["RATE_LIMITED"] for r in refused)
        assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
        assert ready.json()["checks"] == {"database": "ok", "redis": "ok"}
    finally:
        for server in servers:
            stop(server)


async def test_concurrent_hits_sent_together_are_each_counted_exactly(prefix: str) -> None:
    """Hits made in one turn of the loop go to Redis as one pipeline; each is still its own
    atomic script: per caller, exactly the limit passes, whatever the interleaving."""
    settings = edge_settings(
        redis_url=REDIS_URL, redis_key_prefix=prefix, rate_limit_default="3/minute"
    )
    redis = create_redis(settings)
    assert redis is not None
    limiter = RateLimiter(settings, redis, RedisCircuit(settings.redis_retry_interval))
    try:
        callers = [f"user:{n}" for n in range(4)]
        refusals = await asyncio.gather(*(limiter.check(c) for c in callers * 5))
        for n, caller in enumerate(callers):
            mine = refusals[n :: len(callers)]
            assert [r is None for r in mine] == [True, True, True, False, False], (caller, mine)
        assert all(r.limit == "request" and r.retry_after >= 1 for r in refusals if r)
    finally:
        await redis.aclose()


async def test_a_batch_that_cannot_reach_redis_lets_every_request_through(prefix: str) -> None:
    settings = edge_settings(
        redis_url=f"redis://127.0.0.1:{free_port()}", redis_key_prefix=prefix, redis_timeout=0.5
    )
    redis = create_redis(settings)
    assert redis is not None
    limiter = RateLimiter(settings, redis, RedisCircuit(settings.redis_retry_interval))
    try:
        async with captured_logs() as logs:
            refusals = await asyncio.gather(*(limiter.check(f"user:{n}") for n in range(6)))
        assert refusals == [None] * 6
        assert [line for line in logs.lines if line["level"] == "WARNING"]
    finally:
        await redis.aclose()


async def test_persisted_queries_registered_by_one_app_run_on_another(
    database_url: str, prefix: str
) -> None:
    query = "{ products(first: 1) { edges { cursor } } }"
    sha = hashlib.sha256(query.encode()).hexdigest()
    extensions = {"persistedQuery": {"version": 1, "sha256Hash": sha}}
    shared = {"redis_url": REDIS_URL, "redis_key_prefix": prefix}
    async with app_client(database_url, **shared) as (_, first):
        registered = await first.post("/graphql", json={"query": query, "extensions": extensions})
    async with app_client(database_url, **shared) as (_, second):
        by_hash = await second.post("/graphql", json={"extensions": extensions})
    assert "errors" not in registered.json()
    assert by_hash.json() == registered.json()


async def test_field_limits_are_counted_in_redis(database_url: str, prefix: str) -> None:
    shared = {
        "redis_url": REDIS_URL,
        "redis_key_prefix": prefix,
        "rate_limit_fields": {"products": "2/minute"},
    }
    query = {"query": "{ products(first: 1) { edges { cursor } } }"}
    async with app_client(database_url, **shared) as (_, first):
        assert (await first.post("/graphql", json=query)).status_code == 200
    async with app_client(database_url, **shared) as (_, second):
        assert (await second.post("/graphql", json=query)).status_code == 200
        refused = await second.post("/graphql", json=query)
        other = await second.post("/graphql", json={"query": "{ me { id } }"})
    assert refused.status_code == 429
    assert other.status_code == 200


async def test_when_redis_stops_queries_are_still_answered_with_a_warning_and_not_ready(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    redis_server = start_redis(port, tmp_path)
    url = f"redis://127.0.0.1:{port}"
    try:
        async with app_client(database_url, redis_url=url, rate_limit_default="100/minute") as (
            _,
            client,
        ):
            for _ in range(50):  # until our redis-server accepts connections
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            before = await client.post("/graphql", json={"query": "{ __typename }"})
            assert before.status_code == 200
            stop(redis_server)
            async with captured_logs() as logs:
                during = [
                    await client.post("/graphql", json={"query": "{ __typename }"})
                    for _ in range(3)
                ]
                ready = await client.get("/readyz")
            metrics = (await client.get("/metrics")).text
    finally:
        stop(redis_server)
    assert [r.status_code for r in during] == [200, 200, 200]
    assert all(r.json() == {"data": {"__typename": "Query"}} for r in during)
    warnings = [line for line in logs.lines if line["level"] == "WARNING"]
    assert any("redis unavailable" in line["message"] for line in warnings), logs.lines
    # Logged once per interval, not once per request.
    assert sum("redis unavailable" in line["message"] for line in warnings) == 1
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"].startswith("unavailable (")
    assert str(port) not in ready.text  # the error's text stays in the log
    assert ready.json()["checks"]["database"] == "ok"
    assert 'redis_failures_total{component="rate_limit"}' in metrics
    assert "rate_limit_unchecked_total" in metrics


async def test_with_fail_closed_limits_a_redis_outage_is_a_503_not_a_500(
    database_url: str,
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}"
    async with app_client(database_url, redis_url=closed, rate_limit_fail_open=False) as (
        _,
        client,
    ):
        response = await client.post("/graphql", json={"query": "{ __typename }"})
    assert response.status_code == 503
    assert error_codes(response.json()) == ["SERVICE_UNAVAILABLE"]
    assert response.headers["retry-after"] == "1"
