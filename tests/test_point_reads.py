"""Point reads (gql/engine/point_reads.py): which operations the compiled executor answers
without graphql-core's `execute`. What they answer is compared with the reference executor in
tests/test_executor_differential.py; here, that the path is taken when it should be, and only
then."""

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.settings import Settings
from gql.engine import executor as engine
from gql.schema.context import Context
from gql.schema.ids import to_global_id
from gql.schema.loaders import ProductByIdLoader
from tests.conftest import GraphQL, StatementCounter
from tests.factories import Factory

POINT_READ = "query P($id: ID!) { product(id: $id) { id name stock price { amount } } }"


@pytest.fixture
def executions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The operations graphql-core's `execute` ran, by name."""
    seen: list[str] = []
    general = engine.execute

    def counted(schema: Any, document: Any, **arguments: Any) -> Any:
        seen.append(arguments.get("operation_name") or "")
        return general(schema, document, **arguments)

    monkeypatch.setattr(engine, "execute", counted)
    return seen


async def test_a_warm_point_read_skips_graphql_cores_execute(
    factory: Factory, gql: GraphQL, executions: list[str], statements: StatementCounter
) -> None:
    products = await factory.products(3, stock=4)
    answers = []
    for product in products:
        statements.reset()
        body = await gql(POINT_READ, {"id": to_global_id("Product", product.id)})
        answers.append(body)
        assert len(statements.statements) == 1, statements.statements
    # The first compiled the selection's plan; the others were point reads.
    assert executions == ["P"]
    for body, product in zip(answers, products, strict=True):
        assert body == {
            "data": {
                "product": {
                    "id": to_global_id("Product", product.id),
                    "name": product.name,
                    "stock": 4,
                    "price": {"amount": "100.00"},
                }
            }
        }


@pytest.mark.parametrize(
    ("query", "variables"),
    [
        # An ID graphql-core must coerce, or refuse.
        (POINT_READ, {"id": 7}),
        # The load refuses it (not a Product ID): the general path reports it, with its path.
        (POINT_READ, {"id": to_global_id("Order", 1)}),
        # Two root fields; a directive the plan cannot fix ahead.
        ("query P($id: ID!) { a: product(id: $id) { id } b: product(id: $id) { id } }", None),
        ("query P($id: ID!, $b: Boolean!) { product(id: $id) { id @include(if: $b) } }", None),
    ],
)
async def test_other_shapes_and_values_take_the_general_path(
    factory: Factory, gql: GraphQL, executions: list[str], query: str, variables: Any
) -> None:
    product = await factory.product()
    sent = variables or {"id": to_global_id("Product", product.id), "b": True}
    first, again = [_without_correlation_ids(await gql(query, sent)) for _ in range(2)]
    assert first == again
    assert len(executions) == 2, first


def _without_correlation_ids(body: dict[str, Any]) -> dict[str, Any]:
    for error in body.get("errors") or []:
        error["extensions"].pop("correlationId")
    return body


async def test_a_point_reads_row_waits_in_the_loader_for_the_general_path(
    factory: Factory, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    """The point read loads without the loader's queue, but primes its cache: should the plan
    step aside after the load, the general path's `load` finds the same row, not a new read."""
    product = await factory.product()
    async with session_factory() as session:
        context = Context(
            sessions=lambda: session, settings=Settings(), viewer=None, auth_error=None
        )
        loader = context.loader(ProductByIdLoader)
        row = await loader.load_alone(product.id)
        assert row is not None and row["name"] == product.name
        assert await loader.load(product.id) is row
        assert await loader.load_alone(product.id + 1000) is None
        assert await loader.load(product.id + 1000) is None
