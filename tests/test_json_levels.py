"""Levels of a warm answer written as JSON by PostgreSQL (gql/schema/json_levels.py): an order
history's line items, a products page's nodes. That the answers equal the reference executor's
is the executor differential's job (tests/test_executor_differential.py); here: the pieces it
is built from, and when the path is taken and when not."""

from datetime import datetime
from typing import Any

import pytest
from orjson import Fragment
from sqlalchemy import BigInteger, literal, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.settings import Settings
from db.json_objects import Member, Unrenderable, json_object, nested, value
from db.models import Product
from gql.engine.internals import graphql_schema_of
from gql.engine.plans import CompiledExecutionContext
from gql.schema.build import schema
from gql.schema.context import Context
from services.auth import Actor
from services.global_ids import global_id_sql, to_global_id
from services.orders import check_items_json
from tests.conftest import GraphQL, StatementCounter
from tests.factories import Factory

GRAPHQL_SCHEMA = graphql_schema_of(schema)
HISTORY = """{ orders(first: 5) { edges { node { id
  items { quantity unitPrice { amount } product { id name } } } } } }"""


async def test_global_ids_computed_by_postgresql_are_the_services_own(engine: AsyncEngine) -> None:
    row_ids = [1, 9, 10, 99, 12_345, 10**9 + 7, 10**18, 2**63 - 1]
    async with engine.connect() as connection:
        for type_name in ["Product", "OrderItem", "Order", "A" * 36]:
            for row_id in row_ids:
                expression = global_id_sql(type_name, literal(row_id, BigInteger))
                found = (await connection.execute(select(expression))).scalar_one()
                assert found == to_global_id(type_name, row_id)
    with pytest.raises(ValueError, match="too long"):
        global_id_sql("A" * 37, Product.id)  # its base64 would span two lines


@pytest.mark.parametrize(
    "members",
    [
        (Member("x", "no_such_attribute"),),
        (Member("x", "quantity", (Member("y", "amount"),)),),  # a leaf with members
        (Member("x", "product"),),  # an object without members
        (Member("x'); DROP TABLE orders; --", "quantity"),),  # keys are written into the SQL
        (Member("x", None, constant="It's"),),
        (Member("x"),),  # holds nothing
        tuple(Member(f"k{n}", "quantity") for n in range(51)),  # json_build_object's limit
    ],
)
def test_what_postgresql_cannot_render_is_refused_before_any_sql(
    members: tuple[Member, ...],
) -> None:
    with pytest.raises(Unrenderable):
        check_items_json(members)


def test_nested_members_are_rendered_by_their_own_attributes() -> None:
    inner = {"name": value(Product.name)}
    rendered = str(
        json_object((Member("p", "product", (Member("n", "name"),)),), {"product": nested(inner)})
    )
    assert "json_build_object('p', json_build_object('n', products.name))" in rendered


async def _history_statements(
    gql: GraphQL, statements: StatementCounter, token: str, query: str = HISTORY
) -> tuple[dict[str, Any], list[str]]:
    statements.reset()
    body = await gql(query, token=token)
    assert "errors" not in body, body
    return body, list(statements.statements)


@pytest.mark.parametrize(
    ("query", "cold_count", "warm_count"),
    [
        # Every field of the orders renderable: each order with its items, in the page's own
        # statement (viewer, orders: items and products statements gone).
        (HISTORY, 4, 2),
        # `user` is not renderable: the orders stay objects, their items come as JSON from one
        # statement (viewer, orders, items, users: the products statement gone).
        (HISTORY.replace("node { id", "node { id user { name }"), 5, 4),
    ],
)
async def test_a_warm_order_history_takes_json_from_fewer_statements(
    *,
    query: str,
    cold_count: int,
    warm_count: int,
    factory: Factory,
    gql: GraphQL,
    statements: StatementCounter,
) -> None:
    user, token = await factory.user()
    products = await factory.products(3)
    for n in range(3):
        await factory.order(user, [(products[k], k + 1) for k in range(n + 1)])

    cold, cold_statements = await _history_statements(gql, statements, token, query)
    warm, warm_statements = await _history_statements(gql, statements, token, query)

    assert warm == cold
    assert len(cold["data"]["orders"]["edges"]) == 3
    assert not any("json_agg" in sql for sql in cold_statements)
    assert (len(cold_statements), len(warm_statements)) == (cold_count, warm_count)
    assert sum("json_agg" in sql for sql in warm_statements) == 1


async def test_timestamps_written_by_postgresql_are_pythons_isoformat(
    factory: Factory, gql: GraphQL, statements: StatementCounter, engine: AsyncEngine
) -> None:
    """With and without microseconds (isoformat leaves out a zero fraction)."""
    user, token = await factory.user()
    product = await factory.product()
    orders = [await factory.order(user, [(product, 1)]) for _ in range(3)]
    async with engine.begin() as connection:
        for order, moment in zip(
            orders,
            ["2026-01-02 03:04:05+00", "2026-01-02 03:04:05.000100+00", "0999-12-31 23:59:59.5+02"],
            strict=True,
        ):
            await connection.execute(
                text("UPDATE orders SET created_at = :at, updated_at = :at WHERE id = :id"),
                {"at": datetime.fromisoformat(moment), "id": order.id},
            )
    query = "{ orders { edges { node { createdAt updatedAt } } } }"
    cold, _ = await _history_statements(gql, statements, token, query)
    warm, warm_statements = await _history_statements(gql, statements, token, query)
    assert any("json_build_object" in sql for sql in warm_statements)
    assert warm == cold
    assert [edge["node"]["createdAt"] for edge in warm["data"]["orders"]["edges"]] == [
        "0999-12-31T21:59:59.500000+00:00",
        "2026-01-02T03:04:05.000100+00:00",
        "2026-01-02T03:04:05+00:00",
    ]


@pytest.mark.parametrize(
    "query",
    [
        # A field PostgreSQL does not render (timestamps keep Python's format).
        "{ orders { edges { node { items { product { name createdAt } } } } } }",
        # The same relation under two response keys, with different selections (and a user,
        # which keeps the orders objects).
        "{ orders { edges { node { user { name } a: items { quantity } b: items { id } } } } }",
        # A directive below: the plan is not compiled at all.
        "query { orders { edges { node { items { quantity @include(if: true) } } } } }",
    ],
)
async def test_items_stay_objects_where_json_cannot_serve(
    query: str, factory: Factory, gql: GraphQL, statements: StatementCounter
) -> None:
    user, token = await factory.user()
    await factory.order(user, [(await factory.product(), 2)])
    cold, _ = await _history_statements(gql, statements, token, query)
    warm, warm_statements = await _history_statements(gql, statements, token, query)
    assert warm == cold
    assert not any("json_agg" in sql for sql in warm_statements)


async def test_in_process_execution_gets_objects_not_json(
    factory: Factory, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    """`schema.execute` returns Python data, which no orjson writes: no fragments in it."""
    user, _ = await factory.user()
    await factory.order(user, [(await factory.product(), 2)])
    actor = Actor(user_id=user.id, is_admin=False)
    for _ in range(3):  # cold, then warm with a compiled plan
        async with session_factory() as session:
            context = Context(
                sessions=lambda: session, settings=Settings(), viewer=actor, auth_error=None
            )
            result = await schema.execute(HISTORY, context_value=context)
        assert result.errors is None and result.data is not None
        [edge] = result.data["orders"]["edges"]
        [item] = edge["node"]["items"]
        assert item["quantity"] == 2 and item["unitPrice"] == {"amount": "100.00"}


PRODUCTS = """{ products(first: 3, orderBy: PRICE_ASC) { edges { cursor node { id name kind
  price { amount currency } } } pageInfo { hasNextPage endCursor } } }"""


async def test_a_warm_products_page_takes_its_nodes_as_json_from_the_same_statement(
    factory: Factory, gql: GraphQL, statements: StatementCounter
) -> None:
    for n in range(4):
        await factory.product(name=f'Cabin "{n}"', price=f"{10 + n}.50")
    _, token = await factory.user()
    cold, cold_statements = await _history_statements(gql, statements, token, PRODUCTS)
    warm, warm_statements = await _history_statements(gql, statements, token, PRODUCTS)
    assert warm == cold
    assert len(cold["data"]["products"]["edges"]) == 3
    assert len(warm_statements) == len(cold_statements)
    assert not any("json_build_object" in sql for sql in cold_statements)
    assert sum("json_build_object" in sql for sql in warm_statements) == 1


def test_the_general_path_takes_json_where_it_expects_an_object() -> None:
    """Should a plan step aside for an edge whose node came as JSON, graphql-core's general
    path completes the edge and meets the fragment: it is taken as the completed node (it was
    built for this selection), not read as an object."""
    node = Fragment('{"id" : "UHJvZHVjdDox"}')
    context = object.__new__(CompiledExecutionContext)
    product_type = GRAPHQL_SCHEMA.type_map["Product"]
    assert context.complete_object_value(product_type, [], None, None, node) is node  # type: ignore[arg-type]
