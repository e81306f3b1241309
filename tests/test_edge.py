"""The edge without Redis: correlation IDs in headers, errors and logs; masked failures;
query limits before any SQL; persisted queries; GraphQL over HTTP; health and metrics."""

import asyncio
import hashlib
import json
import logging
import uuid
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import BackgroundTasks, FastAPI
from graphql import get_introspection_query
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine
from uvicorn.protocols.utils import ClientDisconnected

from gql.schema.ids import to_global_id
from gql.transport.middleware import new_correlation_id
from gql.transport.ratelimit import client_ip
from tests.conftest import StatementCounter, error_codes, graphql_post_scope
from tests.edge_support import app_client, captured_logs, free_port
from tests.factories import Factory

PRODUCTS = "{ products(first: 2) { edges { node { id name price { amount currency } } } } }"


def sha256(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()


async def post(client: httpx.AsyncClient, body: dict[str, Any], **headers: str) -> httpx.Response:
    response = await client.post("/graphql", json=body, headers=headers)
    # asyncpg reports queries to its loggers (StatementCounter) with call_soon: let the loop
    # run them before a test reads the count.
    await asyncio.sleep(0)
    return response


# --- Correlation IDs -------------------------------------------------------------------------


async def test_a_well_formed_correlation_id_is_kept_and_echoed(client: httpx.AsyncClient) -> None:
    response = await post(client, {"query": "{ __typename }"}, **{"X-Correlation-ID": "req-42.a_b"})
    assert response.headers["x-correlation-id"] == "req-42.a_b"


@pytest.mark.parametrize(
    "forged",
    ["a" * 65, "bad id", "abc\r\nX-Injected: 1".replace("\r\n", "%0d%0a"), "<script>", "é"],
)
async def test_a_forged_or_oversized_correlation_id_is_replaced_and_logged_as_sent_back(
    database_url: str, engine: AsyncEngine, forged: str
) -> None:
    async with engine.begin() as connection:
        await connection.execute(text("DROP TABLE order_items, products CASCADE"))
    async with app_client(database_url) as (_, client), captured_logs() as logs:
        response = await client.post(
            "/graphql",
            json={"query": PRODUCTS},
            headers=[("X-Correlation-ID", forged.encode("utf-8"))],
        )
    sent_back = response.headers["x-correlation-id"]
    assert sent_back != forged
    assert str(uuid.UUID(sent_back)) == sent_back
    assert response.json()["errors"][0]["extensions"]["correlationId"] == sent_back
    errors = [line for line in logs.lines if line["level"] == "ERROR"]
    assert [line["correlation_id"] for line in errors] == [sent_back]


def test_a_new_correlation_id_is_a_random_uuid4_written_as_uuid_writes_it() -> None:
    made = [new_correlation_id() for _ in range(2000)]
    assert len(set(made)) == len(made)
    for text_id in made:
        parsed = uuid.UUID(text_id)
        assert str(parsed) == text_id  # the library's own text of it
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    # Every bit that uuid4 leaves random is random here too: each seen both ways.
    bits = [uuid.UUID(text_id).int for text_id in made]
    fixed = uuid.UUID(int=(0xF000 << 64) | (0xC000 << 48)).int  # version and variant bits
    for bit in range(128):
        if not fixed >> bit & 1:
            assert {value >> bit & 1 for value in bits} == {0, 1}, bit


async def test_background_tasks_log_with_the_request_correlation_id(
    database_url: str,
) -> None:
    async with app_client(database_url) as (app, client):
        background_logger = logging.getLogger("tests.background")

        async def later() -> None:
            await asyncio.sleep(0)
            background_logger.info("background work done")

        @app.get("/test-background")
        async def endpoint(tasks: BackgroundTasks) -> dict[str, str]:
            tasks.add_task(later)
            return {"ok": "yes"}

        async with captured_logs() as logs:
            response = await client.get("/test-background", headers={"X-Correlation-ID": "bg-1"})
    assert response.headers["x-correlation-id"] == "bg-1"
    [line] = [line for line in logs.lines if line["message"] == "background work done"]
    assert line["correlation_id"] == "bg-1"


# --- Errors ----------------------------------------------------------------------------------


async def test_an_unexpected_failure_is_masked_with_the_correlation_id_and_logged_once(
    database_url: str, engine: AsyncEngine
) -> None:
    # A real resolver meets a real database failure: its table is gone.
    async with engine.begin() as connection:
        await connection.execute(text("DROP TABLE order_items, products CASCADE"))
    async with app_client(database_url) as (_, client), captured_logs() as logs:
        response = await post(client, {"query": PRODUCTS})
    assert response.status_code == 200
    correlation_id = response.headers["x-correlation-id"]
    body = response.json()
    assert body["data"] is None
    assert body["errors"] == [
        {
            "message": "Internal server error",
            "locations": [{"line": 1, "column": 3}],
            "path": ["products"],
            "extensions": {"code": "INTERNAL_SERVER_ERROR", "correlationId": correlation_id},
        }
    ]
    for internal in (
        "does not exist",
        'relation "',
        "asyncpg",
        "Traceback",
        "sqlalchemy",
        "SELECT",
    ):
        assert internal not in response.text
    errors = [line for line in logs.lines if line["level"] == "ERROR"]
    assert len(errors) == 1, errors
    assert errors[0]["correlation_id"] == correlation_id
    assert "UndefinedTableError" in errors[0]["exception"]


async def test_a_client_that_hangs_up_is_not_an_error(app: FastAPI) -> None:
    """wrk closing its connections, a browser tab closed mid-request: no ERROR line, no 500."""
    body = orjson.dumps({"query": PRODUCTS})

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, object]) -> None:
        raise ClientDisconnected  # as uvicorn's send does once the socket is gone

    async with captured_logs() as logs:
        await app(graphql_post_scope(), receive, send)
    assert [line for line in logs.lines if line["level"] == "ERROR"] == []
    assert any("client disconnected" in line["message"] for line in logs.lines)


async def test_a_failure_before_graphql_runs_is_a_graphql_shaped_500(
    database_url: str, engine: AsyncEngine, factory: Factory
) -> None:
    _, token = await factory.user()
    async with engine.begin() as connection:
        await connection.execute(text("DROP TABLE users CASCADE"))
    # The token is checked by the context getter, before any GraphQL: its table is gone.
    async with app_client(database_url) as (_, client), captured_logs() as logs:
        response = await post(client, {"query": "{ me { id } }"}, Authorization=f"Bearer {token}")
    assert response.status_code == 500
    correlation_id = response.headers["x-correlation-id"]
    assert response.json() == {
        "errors": [
            {
                "message": "Internal server error",
                "extensions": {"code": "INTERNAL_SERVER_ERROR", "correlationId": correlation_id},
            }
        ]
    }
    errors = [line for line in logs.lines if line["level"] == "ERROR"]
    assert [line["correlation_id"] for line in errors] == [correlation_id]


async def test_a_database_that_is_down_is_a_503_and_not_ready() -> None:
    closed = f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/nothing"
    async with app_client(closed, db_pool_timeout=1) as (_, client):
        response = await post(
            client, {"query": "{ me { id } }"}, Authorization="Bearer bk_" + "x" * 40
        )
        anonymous = await post(client, {"query": PRODUCTS})
        async with captured_logs() as logs:
            ready = await client.get("/readyz")
        alive = await client.get("/healthz")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == "SERVICE_UNAVAILABLE"
    assert error["extensions"]["correlationId"] == response.headers["x-correlation-id"]
    # Met inside a resolver: an executed result whose error says a retry may work.
    assert anonymous.status_code == 200
    assert error_codes(anonymous.json()) == ["SERVICE_UNAVAILABLE"]
    assert ready.status_code == 503
    # The kind of failure only: the error's text (addresses, user names) is for the log.
    reason = ready.json()["checks"]["database"]
    assert reason.startswith("unavailable (") and reason.endswith("Error)"), reason
    assert "127.0.0.1" not in ready.text and "nobody" not in ready.text
    [warning] = [line for line in logs.lines if line["message"].startswith("not ready")]
    assert warning["level"] == "WARNING"
    assert "127.0.0.1" in warning["message"] or "nobody" in warning["message"], warning
    assert alive.status_code == 200


# --- GraphQL over HTTP -----------------------------------------------------------------------


async def test_graphql_response_json_gets_400_for_request_errors_and_200_for_results(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    await factory.product()
    accept = {"Accept": "application/graphql-response+json, application/json;q=0.9"}
    ok = await post(client, {"query": PRODUCTS}, **accept)
    assert ok.status_code == 200
    assert ok.headers["content-type"].startswith("application/graphql-response+json")
    invalid = await post(client, {"query": "{ nope }"}, **accept)
    assert invalid.status_code == 400
    assert "data" not in invalid.json()
    assert error_codes(invalid.json()) == ["GRAPHQL_VALIDATION_FAILED"]
    unparsable = await post(client, {"query": "{ products("}, **accept)
    assert unparsable.status_code == 400
    assert error_codes(unparsable.json()) == ["GRAPHQL_PARSE_FAILED"]
    # An execution error is still a result: 200.
    unauthenticated = await post(client, {"query": "{ orders { edges { cursor } } }"}, **accept)
    assert unauthenticated.status_code == 200
    assert error_codes(unauthenticated.json()) == ["UNAUTHENTICATED"]

    legacy = await post(client, {"query": "{ nope }"}, Accept="application/json")
    assert legacy.status_code == 200
    assert legacy.headers["content-type"] == "application/json"
    assert error_codes(legacy.json()) == ["GRAPHQL_VALIDATION_FAILED"]


async def test_a_malformed_http_request_gets_a_graphql_shaped_400(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/graphql", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == "BAD_REQUEST"
    assert error["extensions"]["correlationId"] == response.headers["x-correlation-id"]


# --- Query limits ----------------------------------------------------------------------------


def alias_bomb(count: int) -> str:
    return "{ " + " ".join(f"a{n}: __typename" for n in range(count)) + " }"


def many_lists(count: int) -> str:
    lists = " ".join(
        f"p{n}: products(first: 100) {{ edges {{ node {{ id name stock }} }} }}"
        for n in range(count)
    )
    return "{ " + lists + " }"


NESTED_HUGE_PAGE = (
    "{ orders(first: 10000) { edges { node { items { product { id } } user { id } } } } }"
)
DEEP_INTROSPECTION = (
    '{ __type(name: "Query") { fields { type { ' + "ofType { " * 20 + "name" + " }" * 23 + " }"
)


@pytest.mark.parametrize(
    "query",
    [DEEP_INTROSPECTION, NESTED_HUGE_PAGE, many_lists(15), alias_bomb(31)],
    ids=["deep", "wide-first-10000", "wide-many-lists", "alias-bomb"],
)
async def test_abusive_queries_are_refused_before_any_sql(
    app: Any, client: httpx.AsyncClient, statements: StatementCounter, query: str
) -> None:
    statements.reset()
    response = await post(client, {"query": query})
    body = response.json()
    assert error_codes(body) == ["QUERY_TOO_COMPLEX"], body
    assert "data" not in body
    assert statements.count == 0, statements.statements


async def test_a_deep_query_of_real_fields_is_refused_before_sql(
    database_url: str, factory: Factory
) -> None:
    await factory.product()
    async with app_client(database_url, max_query_depth=4) as (app, client):
        counter = StatementCounter()
        event.listen(
            app.state.engine.sync_engine, "before_cursor_execute", counter.on_cursor_execute
        )
        event.listen(app.state.engine.sync_engine.pool, "checkout", counter.on_checkout)
        refused = await post(client, {"query": PRODUCTS})
        assert counter.count == 0
        shallow = await post(client, {"query": "{ products(first: 1) { edges { cursor } } }"})
        assert counter.count == 1
    assert error_codes(refused.json()) == ["QUERY_TOO_COMPLEX"]
    assert "5 levels deep; the maximum is 4" in refused.json()["errors"][0]["message"]
    assert "errors" not in shallow.json()


async def test_with_a_token_only_the_authentication_statement_runs_before_a_refusal(
    app: Any, client: httpx.AsyncClient, statements: StatementCounter, factory: Factory
) -> None:
    _, token = await factory.user()
    statements.reset()
    response = await post(client, {"query": alias_bomb(31)}, Authorization=f"Bearer {token}")
    assert error_codes(response.json()) == ["QUERY_TOO_COMPLEX"]
    [statement] = statements.statements
    assert "FROM api_tokens JOIN users" in statement


async def test_a_document_with_too_many_tokens_is_not_even_parsed(
    database_url: str,
) -> None:
    async with app_client(database_url, max_query_tokens=50) as (_, client):
        response = await post(client, {"query": alias_bomb(20)})
    assert error_codes(response.json()) == ["QUERY_TOO_COMPLEX"]


async def test_the_cost_counts_the_default_page_size_and_variables_at_the_maximum(
    database_url: str,
) -> None:
    # products 1 + 20 * (edges 1 + node (1 + id 1 + name 1)) = 81
    query = "{ products { edges { node { id name } } } }"
    with_variable = "query($n: Int) { products(first: $n) { edges { node { id name } } } }"
    async with app_client(database_url, max_query_cost=81) as (_, client):
        assert "errors" not in (await post(client, {"query": query})).json()
        body = (await post(client, {"query": with_variable, "variables": {"n": 1}})).json()
    assert error_codes(body) == ["QUERY_TOO_COMPLEX"]
    assert "estimated cost of 401" in body["errors"][0]["message"]


async def test_graphiql_introspection_and_the_standard_operations_fit_the_default_limits(
    gql: Any,
) -> None:
    body = await gql(get_introspection_query(descriptions=True))
    assert "errors" not in body
    history = (
        "{ orders(first: 100) { edges { cursor node { id status total { amount currency } "
        "user { id name email } items { quantity unitPrice { amount currency } "
        "product { id name price { amount currency } stock } } } } "
        "pageInfo { hasNextPage endCursor } } }"
    )
    assert error_codes(await gql(history)) == ["UNAUTHENTICATED"]  # validated, then executed


# --- Persisted queries -----------------------------------------------------------------------


async def test_automatic_persisted_queries_round_trip(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    await factory.products(3)
    extensions = {"persistedQuery": {"version": 1, "sha256Hash": sha256(PRODUCTS)}}

    unknown = await post(client, {"extensions": extensions})
    assert unknown.status_code == 200
    assert error_codes(unknown.json()) == ["PERSISTED_QUERY_NOT_FOUND"]
    assert unknown.json()["errors"][0]["message"] == "PersistedQueryNotFound"

    registered = await post(client, {"query": PRODUCTS, "extensions": extensions})
    assert len(registered.json()["data"]["products"]["edges"]) == 2

    by_hash = await post(client, {"extensions": extensions})
    assert by_hash.json() == registered.json()

    by_get = await client.get(
        "/graphql", params={"extensions": json.dumps(extensions)}, headers={"Accept": "*/*"}
    )
    assert by_get.json() == registered.json()

    wrong = {"persistedQuery": {"version": 1, "sha256Hash": sha256("{ __typename }")}}
    mismatch = await post(client, {"query": PRODUCTS, "extensions": wrong})
    assert mismatch.status_code == 400
    assert error_codes(mismatch.json()) == ["BAD_REQUEST"]
    assert mismatch.json()["errors"][0]["message"] == "provided sha does not match query"

    bad_version = {"persistedQuery": {"version": 2, "sha256Hash": sha256(PRODUCTS)}}
    assert error_codes((await post(client, {"extensions": bad_version})).json()) == ["BAD_REQUEST"]


async def test_a_query_text_over_max_query_bytes_is_refused_before_parsing_or_sql(
    database_url: str, factory: Factory
) -> None:
    await factory.product()
    # Few tokens, many bytes: whitespace and a comment are not limited by MAX_QUERY_TOKENS.
    padded = PRODUCTS + " " * 300
    multibyte = "{ __typename } # " + "é" * 120  # 137 characters, 257 bytes
    extensions = {"persistedQuery": {"version": 1, "sha256Hash": sha256(padded)}}
    accept_new = {"Accept": "application/graphql-response+json"}
    async with app_client(database_url, max_query_bytes=200) as (app, client):
        counter = StatementCounter()
        event.listen(
            app.state.engine.sync_engine, "before_cursor_execute", counter.on_cursor_execute
        )
        event.listen(app.state.engine.sync_engine.pool, "checkout", counter.on_checkout)
        refused = [
            await post(client, {"query": padded}),
            await post(client, {"query": multibyte}),
            await post(client, {"query": padded, "extensions": extensions}),
        ]
        refused_new = await post(client, {"query": padded}, **accept_new)
        assert counter.count == 0, counter.statements
        not_stored = await post(client, {"extensions": extensions})
        small = await post(client, {"query": PRODUCTS})
    for response in refused:
        assert response.status_code == 200
        assert error_codes(response.json()) == ["QUERY_TOO_COMPLEX"]
        assert "data" not in response.json()
        assert response.json()["errors"][0]["message"] == "The query text exceeds 200 bytes"
    assert refused_new.status_code == 400
    assert error_codes(refused_new.json()) == ["QUERY_TOO_COMPLEX"]
    assert error_codes(not_stored.json()) == ["PERSISTED_QUERY_NOT_FOUND"]
    assert "errors" not in small.json()


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("{ nope }", "GRAPHQL_VALIDATION_FAILED"),
        ("{ products(", "GRAPHQL_PARSE_FAILED"),
        (alias_bomb(31), "QUERY_TOO_COMPLEX"),
    ],
)
async def test_a_persisted_query_that_fails_validation_is_not_registered(
    client: httpx.AsyncClient, query: str, code: str
) -> None:
    extensions = {"persistedQuery": {"version": 1, "sha256Hash": sha256(query)}}
    registration = await post(client, {"query": query, "extensions": extensions})
    by_hash = await post(client, {"extensions": extensions})
    assert error_codes(registration.json()) == [code]
    assert error_codes(by_hash.json()) == ["PERSISTED_QUERY_NOT_FOUND"]


async def test_a_persisted_query_refused_by_a_rate_limit_is_not_registered(
    database_url: str, factory: Factory
) -> None:
    await factory.product()
    query = "{ products(first: 1) { edges { cursor } } }"
    extensions = {"persistedQuery": {"version": 1, "sha256Hash": sha256(query)}}
    async with app_client(database_url, rate_limit_fields={"products": "1/minute"}) as (_, client):
        passed = await post(client, {"query": PRODUCTS})
        refused = await post(client, {"query": query, "extensions": extensions})
        by_hash = await post(client, {"extensions": extensions})
    assert "errors" not in passed.json()
    assert refused.status_code == 429
    assert error_codes(by_hash.json()) == ["PERSISTED_QUERY_NOT_FOUND"]


async def test_allow_list_mode_runs_only_the_manifest_queries(
    database_url: str, tmp_path: Path
) -> None:
    manifest = tmp_path / "persisted.json"
    manifest.write_text(json.dumps({sha256(PRODUCTS): PRODUCTS}))
    async with app_client(database_url, persisted_queries_manifest=manifest) as (_, client):
        known = {"persistedQuery": {"version": 1, "sha256Hash": sha256(PRODUCTS)}}
        assert "errors" not in (await post(client, {"extensions": known})).json()
        free_text = await post(client, {"query": "{ __typename }"})
        other = "{ __typename }"
        unknown = {"persistedQuery": {"version": 1, "sha256Hash": sha256(other)}}
        registration = await post(client, {"query": other, "extensions": unknown})
    assert error_codes(free_text.json()) == ["PERSISTED_QUERY_NOT_ALLOWED"]
    assert error_codes(registration.json()) == ["PERSISTED_QUERY_NOT_ALLOWED"]


# --- Rate limits in one process (in memory) ---------------------------------------------------


async def test_a_refused_request_is_a_graphql_shaped_429_with_retry_after(
    database_url: str,
) -> None:
    async with app_client(database_url, rate_limit_default="3/minute") as (_, client):
        passed = [await post(client, {"query": "{ __typename }"}) for _ in range(3)]
        refused = await post(client, {"query": "{ __typename }"})
        metrics = (await client.get("/metrics")).text
    assert [r.status_code for r in passed] == [200, 200, 200]
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json() == {
        "errors": [
            {
                "message": refused.json()["errors"][0]["message"],
                "extensions": {
                    "code": "RATE_LIMITED",
                    "correlationId": refused.headers["x-correlation-id"],
                },
            }
        ]
    }
    assert 'rate_limit_refusals_total{limit="request"}' in metrics


async def test_a_field_limit_counts_each_occurrence_of_its_root_field(
    database_url: str, factory: Factory
) -> None:
    await factory.product()
    fields = {"products": "3/minute"}
    async with app_client(database_url, rate_limit_fields=fields) as (_, client):
        twice = "{ a: products(first: 1) { edges { cursor } } b: products { edges { cursor } } }"
        first = await post(client, {"query": twice})
        via_fragment = await post(
            client, {"query": "{ ...Q } fragment Q on Query { products { edges { cursor } } }"}
        )
        refused = await post(client, {"query": "{ products(first: 1) { edges { cursor } } }"})
        other_fields = await post(client, {"query": "{ me { id } }"})
    assert "errors" not in first.json()
    assert "errors" not in via_fragment.json()
    assert refused.status_code == 429
    assert "`products`" in refused.json()["errors"][0]["message"]
    assert other_fields.status_code == 200


async def test_limits_are_per_user_and_per_client_ip_behind_trusted_proxies_only(
    database_url: str, factory: Factory
) -> None:
    (_, alice), (_, bob) = await factory.user(), await factory.user()
    query = {"query": "{ __typename }"}
    async with app_client(database_url, rate_limit_default="1/minute") as (_, client):
        assert (await post(client, query, Authorization=f"Bearer {alice}")).status_code == 200
        assert (await post(client, query, Authorization=f"Bearer {bob}")).status_code == 200
        assert (await post(client, query, Authorization=f"Bearer {alice}")).status_code == 429
        # The test client's peer (127.0.0.1) is no trusted proxy: its X-Forwarded-For is a lie.
        assert (await post(client, query, **{"X-Forwarded-For": "10.0.0.1"})).status_code == 200
        assert (await post(client, query, **{"X-Forwarded-For": "10.0.0.2"})).status_code == 429
    async with app_client(
        database_url, rate_limit_default="1/minute", trusted_proxies="127.0.0.1"
    ) as (_, client):
        assert (await post(client, query, **{"X-Forwarded-For": "10.0.0.1"})).status_code == 200
        assert (await post(client, query, **{"X-Forwarded-For": "10.0.0.2"})).status_code == 200
        # A client-written hop left of the real one changes nothing.
        spoofed = {"X-Forwarded-For": "1.2.3.4, 10.0.0.1"}
        assert (await post(client, query, **spoofed)).status_code == 429


# --- Health and metrics ----------------------------------------------------------------------


async def test_health_readiness_and_metrics(client: httpx.AsyncClient, factory: Factory) -> None:
    await factory.product()
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok"}}
    await post(client, {"query": "query Catalogue " + PRODUCTS, "operationName": "Catalogue"})
    await post(client, {"query": "{ nope }"})
    metrics = await client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text_ = metrics.text
    assert (
        'graphql_request_duration_seconds_count{operation_name="Catalogue",operation_type="query"}'
        in text_
    )
    assert 'graphql_errors_total{code="GRAPHQL_VALIDATION_FAILED"}' in text_
    assert "db_pool_checked_out_connections " in text_


@pytest.mark.parametrize("exists", [False, True], ids=["missing-folder", "not-exported"])
async def test_metrics_answer_with_this_process_values_when_the_multiprocess_folder_is_unusable(
    database_url: str, tmp_path: Path, exists: bool
) -> None:
    """PROMETHEUS_MULTIPROC_DIR from a .env file (so not in os.environ when prometheus-client
    was imported) or naming a folder that is not there: not a 500, and one warning."""
    folder = tmp_path / "metrics"
    if exists:
        folder.mkdir()
    async with (
        app_client(database_url, prometheus_multiproc_dir=folder) as (_, client),
        captured_logs() as logs,
    ):
        await post(client, {"query": "{ nope }"})
        scrapes = [await client.get("/metrics") for _ in range(2)]
    assert [scrape.status_code for scrape in scrapes] == [200, 200]
    assert 'graphql_errors_total{code="GRAPHQL_VALIDATION_FAILED"}' in scrapes[1].text
    warnings = [line for line in logs.lines if "PROMETHEUS_MULTIPROC_DIR" in line["message"]]
    assert [line["level"] for line in warnings] == ["WARNING"]


async def test_aliased_lists_at_the_root_share_the_session_without_racing(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    await factory.products(3)
    query = (
        "{ a: products(first: 1) { edges { cursor } } b: products(first: 2) { edges { cursor } } }"
    )
    body = (await post(client, {"query": query})).json()
    assert "errors" not in body, body
    assert [len(body["data"][k]["edges"]) for k in "ab"] == [1, 2]


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("203.0.113.9", ["10.0.0.1"], [], "203.0.113.9"),
        ("203.0.113.9", ["10.0.0.1"], ["10.0.0.0/8"], "203.0.113.9"),
        ("10.0.0.2", ["198.51.100.7"], ["10.0.0.0/8"], "198.51.100.7"),
        ("10.0.0.2", ["1.1.1.1, 198.51.100.7, 10.0.0.5"], ["10.0.0.0/8"], "198.51.100.7"),
        ("10.0.0.2", ["198.51.100.7", "10.0.0.5"], ["10.0.0.0/8"], "198.51.100.7"),
        ("10.0.0.2", [], ["10.0.0.0/8"], "10.0.0.2"),
        ("10.0.0.2", ["not-an-ip"], ["10.0.0.0/8"], "not-an-ip"),
    ],
)
def test_the_client_ip_is_the_rightmost_hop_that_is_not_a_trusted_proxy(
    peer: str, forwarded: list[str], trusted: list[str], expected: str
) -> None:
    networks = [ip_network(network) for network in trusted]
    assert client_ip(peer, forwarded, networks) == expected


async def test_a_body_over_the_limit_is_refused_before_it_is_read(database_url: str) -> None:
    big = json.dumps({"query": "{ __typename }", "variables": {"pad": "x" * 5000}}).encode()

    async def chunks() -> Any:
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000]

    async with app_client(database_url, max_request_bytes=4000) as (_, client):
        sized = await client.post(
            "/graphql", content=big, headers={"Content-Type": "application/json"}
        )
        streamed = await client.post(
            "/graphql", content=chunks(), headers={"Content-Type": "application/json"}
        )
        small = await post(client, {"query": "{ __typename }"})
    for response in (sized, streamed):
        assert response.status_code == 413
        assert error_codes(response.json()) == ["REQUEST_TOO_LARGE"]
        correlation_id = response.json()["errors"][0]["extensions"]["correlationId"]
        assert correlation_id == response.headers["x-correlation-id"]
    assert small.status_code == 200


CREATE_ORDER = """
mutation Create($input: CreateOrderInput!) {
  createOrder(input: $input) { __typename }
}
"""


async def test_the_create_order_limit_refuses_a_user_before_the_mutation_runs(
    database_url: str, factory: Factory, engine: AsyncEngine
) -> None:
    (_, alice), (_, bob) = await factory.user(), await factory.user()
    product = await factory.product(stock=100)
    product_id = to_global_id("Product", product.id)
    async with app_client(database_url, rate_limit_fields={"createOrder": "2/minute"}) as (
        app,
        client,
    ):

        async def create(token: str, key: str) -> httpx.Response:
            items = [{"productId": product_id, "quantity": 1}]
            variables = {"input": {"idempotencyKey": key, "items": items}}
            body = {"query": CREATE_ORDER, "variables": variables}
            return await post(client, body, Authorization=f"Bearer {token}")

        passed = [await create(alice, f"k{n}") for n in range(2)]
        counter = StatementCounter()
        sync_engine = app.state.engine.sync_engine
        event.listen(sync_engine, "before_cursor_execute", counter.on_cursor_execute)
        event.listen(sync_engine.pool, "checkout", counter.on_checkout)
        refused = await create(alice, "k3")
        await asyncio.sleep(0)  # asyncpg reports queries to its loggers with call_soon
        statements_of_refusal = list(counter.statements)
        other_user = await create(bob, "k1")
    assert [r.json()["data"]["createOrder"]["__typename"] for r in passed] == [
        "CreateOrderSuccess",
        "CreateOrderSuccess",
    ]
    assert refused.status_code == 429
    assert error_codes(refused.json()) == ["RATE_LIMITED"]
    assert len(statements_of_refusal) == 1, statements_of_refusal  # the token's user, no more
    assert other_user.json()["data"]["createOrder"]["__typename"] == "CreateOrderSuccess"
    async with engine.connect() as connection:
        stock = await connection.scalar(text(f"SELECT stock FROM products WHERE id = {product.id}"))
    assert stock == 97
