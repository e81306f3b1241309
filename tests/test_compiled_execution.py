"""Compiled completion plans give exactly what graphql-core's general executor gives."""

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.settings import Settings
from gql.engine import plans as execution
from gql.schema.build import build_schema, schema
from gql.schema.context import Context
from gql.schema.ids import to_global_id
from services.auth import Actor
from tests.factories import Factory

general_schema = build_schema(execution_context_class=None)

QUERIES = [
    # The order history, with aliases and __typename.
    """{ orders(first: 10) { __typename edges { cursor node { __typename id status
        total { amount currency } createdAt mine: user { name email }
        items { quantity subtotal { amount } product { id name kind price { amount } } } } }
        pageInfo { hasNextPage endCursor } } }""",
    # Fragments, inline and named, and the same field selected twice.
    """fragment P on Product { id name stock }
       { orders(first: 3) { edges { node { items { product { ...P name } } ...on Order {
         items { quantity product { ...P sku } } } } } } }""",
    # Directives depend on variables: the general path must handle them.
    """query ($withItems: Boolean!) { orders(first: 5) { edges { node { id
         items @include(if: $withItems) { quantity } } } } }""",
    # Relations not prefetched (reached through node) fall back to the loaders.
    "__NODE__",
    "{ products(first: 5, orderBy: PRICE_ASC) { edges { node { id name price { amount } } } } }",
]


async def _run(
    target: Any, query: str, session_factory: async_sessionmaker[AsyncSession], actor: Actor
) -> dict[str, Any]:
    async with session_factory() as session:
        context = Context(
            sessions=lambda: session, settings=Settings(), viewer=actor, auth_error=None
        )
        result = await target.execute(
            query, variable_values={"withItems": True}, context_value=context
        )
    assert result.errors is None, result.errors
    assert result.data is not None
    return result.data


@pytest.mark.parametrize("query", QUERIES)
async def test_compiled_plans_match_the_general_executor(
    query: str, factory: Factory, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    user, _ = await factory.user()
    products = await factory.products(6)
    orders = [
        await factory.order(user, [(products[(n + k) % 6], k + 1) for k in range(n % 4 + 1)])
        for n in range(8)
    ]
    if query == "__NODE__":
        query = (
            "{ "
            + " ".join(
                f'o{n}: node(id: "{to_global_id("Order", order.id)}") {{ id ... on Order {{ '
                "items { quantity product { name } } user { name } } }"
                for n, order in enumerate(orders)
            )
            + " }"
        )
    actor = Actor(user_id=user.id, is_admin=False)
    compiled = await _run(schema, query, session_factory, actor)
    general = await _run(general_schema, query, session_factory, actor)
    assert compiled == general
    assert compiled  # and there was something to compare


async def test_order_history_is_completed_by_a_compiled_plan(
    factory: Factory, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    user, _ = await factory.user()
    await factory.order(user, [(await factory.product(), 1)])
    execution._plans.clear()
    await _run(schema, QUERIES[0], session_factory, Actor(user_id=user.id, is_admin=False))
    compiled = {key[0].name for key, entry in execution._plans.items() if entry.plan is not None}
    assert "OrderConnection" in compiled


@pytest.mark.parametrize(
    "query",
    [
        """query ($x: Boolean!) { orders(first: 5) { edges { node { id
             ... @include(if: $x) { status } } } } }""",
        """fragment F on Order { status }
           query ($x: Boolean!) {
             orders(first: 5) { edges { node { id ...F @skip(if: $x) } } } }""",
    ],
)
async def test_fragment_directives_follow_each_requests_variables(
    query: str, factory: Factory, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    """A plan is reused by every request of a document: what a fragment's @include or @skip
    selects must come from each request's variables, not from the first one's."""
    user, _ = await factory.user()
    await factory.order(user, [(await factory.product(), 1)])
    actor = Actor(user_id=user.id, is_admin=False)
    for x in (True, False, True, False):
        async with session_factory() as session:
            context = Context(
                sessions=lambda: session, settings=Settings(), viewer=actor, auth_error=None
            )
            result = await schema.execute(query, variable_values={"x": x}, context_value=context)
        assert result.errors is None, result.errors
        assert result.data is not None
        node = result.data["orders"]["edges"][0]["node"]
        included = x if "@include" in query else not x
        assert ("status" in node) is included, (x, node)
