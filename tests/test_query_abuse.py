"""Abuse of the query limits found in review (issue 13): `_entities` costed like any list,
by its representations, for new and known documents alike (M2); validation bounded
before graphql-core's quadratic merge check, whatever the operation name (M3)."""

import time
import uuid
from typing import Any

import httpx
import pytest
from graphql import (
    ValidationRule,
    get_introspection_query,
    parse,
    specified_rules,
    validate,
)
from sqlalchemy import event

from bench.scenarios import ORDER_HISTORY, PRODUCT_BY_ID, PRODUCTS_PAGE
from core.settings import Settings
from gql.engine.internals import graphql_schema_of
from gql.engine.query_limits import QueryTooComplex, query_limits_rule_for
from gql.schema.build import schema
from gql.schema.ids import to_global_id
from tests.conftest import GraphQL, StatementCounter, error_codes
from tests.documents import ENTITIES
from tests.edge_support import app_client
from tests.factories import Factory


def refs(type_name: str, row_ids: list[int]) -> list[dict[str, Any]]:
    return [{"__typename": type_name, "id": to_global_id(type_name, row_id)} for row_id in row_ids]


def inline_entities(representations: list[dict[str, Any]]) -> str:
    """ENTITIES with its representations written into the document."""
    literal = ", ".join(
        f'{{ __typename: "{rep["__typename"]}", id: "{rep["id"]}" }}' for rep in representations
    )
    return ENTITIES.replace("query Entities($representations: [_Any!]!)", "query Entities").replace(
        "$representations", f"[{literal}]"
    )


def counted(app: Any) -> StatementCounter:
    counter = StatementCounter()
    event.listen(app.state.engine.sync_engine, "before_cursor_execute", counter.on_cursor_execute)
    event.listen(app.state.engine.sync_engine.pool, "checkout", counter.on_checkout)
    return counter


def assert_entities_refused(body: dict[str, Any]) -> None:
    assert error_codes(body) == ["QUERY_TOO_COMPLEX"], body
    assert body["data"] is None
    message = body["errors"][0]["message"]
    assert "entity representations with an estimated cost of" in message
    assert "the maximum is" in message and "smaller batches" in message


# --- M2: `_entities` is costed by its representations -----------------------------------------


async def test_an_entity_flood_in_a_variable_is_refused_before_any_sql(
    factory: Factory, gql: GraphQL, statements: StatementCounter
) -> None:
    """The review's request: 19,000 Product representations, anonymous."""
    [product] = await factory.products(1)
    statements.reset()
    body = await gql(ENTITIES, {"representations": refs("Product", [product.id] * 19_000)})
    assert_entities_refused(body)
    # 19,000 representations of cost 6 (1 + id, name, price { amount currency }: 5), plus 1
    assert "19000 entity representations with an estimated cost of 114001" in str(body)
    assert statements.count == 0, statements.statements


async def test_entity_representations_inline_in_the_document_are_costed_the_same(
    database_url: str, factory: Factory
) -> None:
    # The token limit keeps inline lists short (about 250): a lower cost limit shows the rule.
    products = await factory.products(3)
    representations = refs("Product", [p.id for p in products] * 30)  # 90 of cost 6, plus 1: 541
    async with app_client(database_url, max_query_cost=540) as (app, client):
        counter = counted(app)
        inline = await client.post("/graphql", json={"query": inline_entities(representations)})
        as_variable = await client.post(
            "/graphql", json={"query": ENTITIES, "variables": {"representations": representations}}
        )
        assert counter.count == 0, counter.statements
        served = await client.post(
            "/graphql",
            json={"query": inline_entities(representations[:89])},  # 535
        )
    assert_entities_refused(inline.json())
    assert_entities_refused(as_variable.json())
    assert inline.json()["errors"][0]["message"] == as_variable.json()["errors"][0]["message"]
    assert "errors" not in served.json(), served.json()
    assert len(served.json()["data"]["_entities"]) == 89


async def test_aliased_entity_fields_share_one_budget(
    factory: Factory, gql: GraphQL, statements: StatementCounter
) -> None:
    """Two `_entities` of 500 representations each: each alone would pass (3,001), together
    they cost 6,002; the second is refused before the loads of the first have started."""
    [product] = await factory.products(1)
    query = """
    query Twice($a: [_Any!]!, $b: [_Any!]!) {
      a: _entities(representations: $a) { ... on Product { id name price { amount currency } } }
      b: _entities(representations: $b) { ... on Product { id name price { amount currency } } }
    }"""
    half = refs("Product", [product.id] * 500)
    statements.reset()
    body = await gql(query, {"a": half, "b": half})
    assert error_codes(body) == ["QUERY_TOO_COMPLEX"], body
    assert body["data"] is None
    assert "(6002 with this operation's other `_entities`)" in body["errors"][0]["message"]
    assert statements.count == 0, statements.statements


async def test_a_gateways_normal_batch_is_served_in_one_statement(
    factory: Factory, gql: GraphQL, statements: StatementCounter
) -> None:
    """800 Product representations (Apollo Router batches a few hundred per fetch) cost
    4,801: only the Product branch counts for a Product, not the heavier Order branch."""
    products = await factory.products(100)
    representations = refs("Product", [p.id for p in products] * 8)
    statements.reset()
    body = await gql(ENTITIES, {"representations": representations})
    assert "errors" not in body, body
    assert len(body["data"]["_entities"]) == 800
    assert body["data"]["_entities"][799]["name"] == products[99].name
    assert statements.count == 1, statements.statements


async def test_the_fast_lane_refuses_an_entity_flood_as_the_full_path_does(
    database_url: str, factory: Factory
) -> None:
    products = await factory.products(3)
    one = refs("Product", [products[0].id])
    normal = {"query": ENTITIES, "variables": {"representations": one}}
    flood = {
        "query": ENTITIES,
        "variables": {"representations": refs("Product", [p.id for p in products] * 1000)},
    }
    async with app_client(database_url) as (_, client):
        full = await client.post("/graphql", json=flood)
    async with app_client(database_url) as (app, client):
        assert "errors" not in (await client.post("/graphql", json=normal)).json()
        # From now on this document is known: parsed and validated, not again.
        assert app.state.documents.parsed(ENTITIES).validation_errors == ()
        counter = counted(app)
        lane = await client.post("/graphql", json=flood)
        assert counter.count == 0, counter.statements
    assert_entities_refused(lane.json())
    assert lane.status_code == full.status_code == 200
    bodies = [full.json(), lane.json()]
    for body in bodies:
        for error in body["errors"]:
            del error["extensions"]["correlationId"]
    assert bodies[0] == bodies[1]


# --- M3: validation is bounded before graphql-core's rules run ---------------------------------


def named(body: str) -> str:
    """A new operation name each time, as the attack sends: no cache can help."""
    return f"query Q{uuid.uuid4().hex} {{ {body} }}"


REPEATED = {
    "300 repeated fields": lambda: named(" ".join(["me { id }"] * 300)),
    "300 repeated fragment spreads": lambda: (
        named("me { " + " ".join(["...F"] * 300) + " }") + " fragment F on User { id }"
    ),
    "300 fields spreading a fragment": lambda: (
        named(" ".join(["me { ...F }"] * 300)) + " fragment F on User { id }"
    ),
    "200 distinct fragments": lambda: (
        named("me { " + " ".join(f"...F{n}" for n in range(200)) + " }")
        + " ".join(f" fragment F{n} on User {{ id }}" for n in range(200))
    ),
    "one field 300 times": lambda: named("me { " + " ".join(["id"] * 300) + " }"),
    "30 fields of 30 (merged)": lambda: named(
        " ".join(["me { " + " ".join(["id"] * 30) + " }"] * 30)
    ),
}


@pytest.mark.parametrize("make", REPEATED.values(), ids=REPEATED.keys())
async def test_repeated_selections_are_refused_before_validation_compares_them(
    client: httpx.AsyncClient, statements: StatementCounter, make: Any
) -> None:
    statements.reset()
    response = await client.post("/graphql", json={"query": make()})
    body = response.json()
    assert error_codes(body) == ["QUERY_TOO_COMPLEX"], body
    assert "data" not in body
    assert "repeats selections too often" in body["errors"][0]["message"]
    assert "more than 1000 pairs" in body["errors"][0]["message"]
    assert statements.count == 0


async def test_the_merge_check_never_runs_on_a_refused_document(gql: GraphQL) -> None:
    """`me: __typename` conflicts with `me { id }`: graphql-core's OverlappingFieldsCanBeMerged
    would report it (GRAPHQL_VALIDATION_FAILED), and FieldsOnCorrectType the unknown field;
    both stay silent because validation was aborted before them."""
    body = await gql(named(" ".join(["me { id }"] * 300) + " me: __typename nope"))
    assert error_codes(body) == ["QUERY_TOO_COMPLEX"], body
    small = await gql(named("me { id } me: __typename"))
    assert error_codes(small) == ["GRAPHQL_VALIDATION_FAILED"], small
    assert "conflict" in small["errors"][0]["message"]


class _SelectionSpy(ValidationRule):
    seen = 0

    def enter_selection_set(self, *_args: Any) -> None:
        _SelectionSpy.seen += 1


def test_graphql_core_stops_every_rule_when_the_limits_rule_aborts() -> None:
    """Pins graphql-core's contract this relies on: a rule raising ValidationAbortedError
    (our QueryTooComplex) on entering the document ends `validate`, whose result is the
    errors so far with that error last; no rule visits a selection set after it."""
    rule = query_limits_rule_for(Settings(environment="test", redis_url=None))
    document = parse(named(" ".join(["me { id }"] * 300)))
    _SelectionSpy.seen = 0
    started = time.process_time()
    errors = validate(graphql_schema_of(schema), document, [rule, _SelectionSpy, *specified_rules])
    elapsed = time.process_time() - started
    assert [type(error) for error in errors] == [QueryTooComplex]
    assert errors[0].extensions == {"code": "QUERY_TOO_COMPLEX"}
    assert _SelectionSpy.seen == 0
    # A generous sanity bound: about 1 ms now, about 300 ms to 1 s before.
    assert elapsed < 0.1, elapsed
    # Without the limits rule, the spy does see them (the test would notice a no-op).
    validate(graphql_schema_of(schema), parse("{ me { id } }"), [_SelectionSpy])
    assert _SelectionSpy.seen == 2


async def test_too_many_selections_are_refused_before_other_rules_report_them(
    gql: GraphQL,
) -> None:
    body = await gql(named(" ".join(f"f{n}" for n in range(1001))))
    assert error_codes(body) == ["QUERY_TOO_COMPLEX"], body
    assert "more than 1000 selections" in body["errors"][0]["message"]


async def test_every_limit_refusal_aborts_validation(gql: GraphQL) -> None:
    """Depth, aliases and cost refusals too: no other rule works on a refused document."""
    alias_bomb = " ".join(f"a{n}: __typename" for n in range(31))
    body = await gql(named(alias_bomb + " nope"))
    assert error_codes(body) == ["QUERY_TOO_COMPLEX"], body
    assert "uses 31 aliases" in body["errors"][0]["message"]


RELAY_STYLE = """
query ProductsScreen($first: Int) {
  products(first: $first) {
    edges { cursor node { id ...ProductCard ...ProductPrice ...ProductStock ...ProductTitle } }
    pageInfo { hasNextPage endCursor }
  }
  me { id ...Avatar ...Account }
  cheap: products(first: 5, orderBy: PRICE_ASC) { edges { node { id ...ProductCard } } }
}
fragment ProductCard on Product { id __typename name kind ...ProductPrice ...ProductTitle }
fragment ProductPrice on Product { id __typename price { amount currency } }
fragment ProductStock on Product { id __typename stock }
fragment ProductTitle on Product { id __typename name sku description }
fragment Avatar on User { id __typename name }
fragment Account on User { id __typename email name isAdmin createdAt }
"""


@pytest.mark.parametrize(
    "query",
    [
        get_introspection_query(
            descriptions=True,
            specified_by_url=True,
            directive_is_repeatable=True,
            schema_description=True,
            input_value_deprecation=True,
        ),
        PRODUCTS_PAGE,
        ORDER_HISTORY,
        PRODUCT_BY_ID,
        RELAY_STYLE,
        ENTITIES,
    ],
    ids=["introspection", "products-page", "order-history", "product-by-id", "relay", "entities"],
)
def test_legitimate_big_queries_pass_the_limits(query: str) -> None:
    rule = query_limits_rule_for(Settings(environment="test", redis_url=None))
    assert validate(graphql_schema_of(schema), parse(query), [rule, *specified_rules]) == []
