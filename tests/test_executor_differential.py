"""The compiled executor answers exactly as graphql-core's reference executor (EXECUTOR=reference)
for operations generated from the served schema (hypothesis-graphql), decorated with what the
generator does not write itself: variables, aliases, named and inline fragments, fields
selected twice, and @include/@skip on fields and fragments.

Two apps, one per executor, share one seeded database. Each operation runs for three viewers
(anonymous, a customer, the admin): the first viewer's first run is cold (a new document, no
plan compiled), every other run warm (document cache and plans reused), once with the Boolean
variables flipped; every response (status, data, errors without their correlation IDs) must be
the same from both apps.

`make fuzz` runs a long version: FUZZ_EXAMPLES operations instead of the default bound.
"""

import asyncio
import os
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import graphql
import httpx
import pytest
from graphql import (
    ArgumentNode,
    BooleanValueNode,
    DirectiveNode,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    NamedTypeNode,
    NameNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableDefinitionNode,
    VariableNode,
)
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import nodes, queries

from core.settings import Settings
from db.engine import create_db_engine, create_session_factory
from db.models import OrderStatus, ProductKind
from gql.app import create_app
from gql.engine import plans as execution
from gql.engine.internals import graphql_schema_of
from gql.schema.build import schema
from gql.schema.ids import to_global_id
from services import catalog
from services import orders as order_reads
from tests.factories import Factory

T = TypeVar("T")

GRAPHQL_SCHEMA = graphql_schema_of(schema)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
# Root fields to generate under, the nested connections weighted up (`_service` left out: its
# SDL is one string).
ROOT_FIELDS = [
    *["orders"] * 4,
    *["products"] * 2,
    *["node"] * 2,
    *["_entities"] * 2,
    "order",
    "product",
    "me",
    "reservations",
]


@dataclass(frozen=True)
class Case:
    """One generated request."""

    query: str
    variables: dict[str, Any] = field(default_factory=dict)
    operation_name: str | None = None


# ---------------------------------------------------------------------------------------------
# Running the apps on a loop of their own, so hypothesis drives them from a plain function.


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=120)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@dataclass
class World:
    """The seeded database, the two apps bound to it, and what the strategies draw from."""

    apps: dict[str, Any]
    clients: dict[str, httpx.AsyncClient]
    tokens: dict[str, str | None]
    ids: list[str]
    cursors: list[str]
    contexts: list[Any]

    @classmethod
    async def open(cls, database_url: str) -> "World":
        base = Settings(environment="test", redis_url=None, rate_limit_enabled=False)
        engine = create_db_engine(database_url, base)
        factory = Factory(create_session_factory(engine))
        customer, customer_token = await factory.user(name="Carla")
        other, _ = await factory.user(name="Otto")
        admin, admin_token = await factory.user(is_admin=True, name="Ada")
        kinds = list(ProductKind)
        products = [
            await factory.product(
                # Text that JSON must escape, for answers PostgreSQL writes (items as JSON).
                name=f"Room {n}" if n % 2 else f'Room {n} "{n}" \\ \n\t é 😀 \u2028 </',
                description="" if n % 3 else f'\x01 {n}\r\n"',
                price=f"{40 + 7 * n}.{n}5",
                stock=n,
                kind=kinds[n % len(kinds)],
                currency="EUR" if n % 4 else "USD",
            )
            for n in range(7)
        ]
        orders = []
        statuses = list(OrderStatus)
        for n, owner in enumerate([customer] * 4 + [other] * 2 + [admin]):
            items = [(products[(n + k) % 7], k + 1) for k in range(n % 3 + 1)]
            if n % 4 == 0:
                items = [item for item in items if item[0].currency == "USD"] or items[:1]
            orders.append(await factory.order(owner, items, status=statuses[n % len(statuses)]))
        await engine.dispose()
        ids = [
            *(to_global_id("Order", order.id) for order in orders),
            *(to_global_id("Product", product.id) for product in products[:4]),
            *(to_global_id("User", user.id) for user in (customer, other, admin)),
            to_global_id("Order", 999_999),
            to_global_id("Reservation", 1),
            "not-an-id",
        ]
        apps, clients, contexts = {}, {}, []
        for executor in ("compiled", "reference"):
            settings_ = base.model_copy(update={"executor": executor})
            app = create_app(settings_, database_url=database_url)
            lifespan = app.router.lifespan_context(app)
            await lifespan.__aenter__()
            contexts.append(lifespan)
            apps[executor] = app
            clients[executor] = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://testserver"
            )
        world = cls(
            apps=apps,
            clients=clients,
            tokens={"anonymous": None, "customer": customer_token, "admin": admin_token},
            ids=ids,
            cursors=[],
            contexts=contexts,
        )
        # Real cursors, so that `after:` pages too.
        for page in ("products(first: 2)", "orders(first: 2)"):
            _, body = await world.post(
                "reference", Case(f"{{ {page} {{ pageInfo {{ endCursor }} }} }}"), admin_token
            )
            [connection] = body["data"].values()
            world.cursors.append(connection["pageInfo"]["endCursor"])
        return world

    async def close(self) -> None:
        for client in self.clients.values():
            await client.aclose()
        for lifespan in self.contexts:
            await lifespan.__aexit__(None, None, None)

    async def post(
        self, executor: str, case: Case, token: str | None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body: dict[str, Any] = {"query": case.query, "variables": case.variables}
        if case.operation_name:
            body["operationName"] = case.operation_name
        response = await self.clients[executor].post("/graphql", json=body, headers=headers)
        return response.status_code, _comparable(response.json())


def _comparable(body: Any) -> Any:
    """The body without what differs per request (correlation IDs)."""
    for error in body.get("errors") or []:
        (error.get("extensions") or {}).pop("correlationId", None)
    return body


# ---------------------------------------------------------------------------------------------
# Strategies: hypothesis-graphql's documents, then decorated.


def _documents(world: World) -> st.SearchStrategy[DocumentNode]:
    ids = st.sampled_from(world.ids)
    representation = st.fixed_dictionaries(
        {"__typename": st.sampled_from(["Order", "Product", "User", "Reservation"]), "id": ids}
    ).map(
        lambda rep: nodes.Object(
            [
                graphql.ObjectFieldNode(name=NameNode(value=key), value=nodes.String(value))
                for key, value in rep.items()
            ]
        )
    )
    scalars = {
        "ID": ids.map(nodes.String),
        "Int": st.one_of(st.integers(0, 4), st.sampled_from([-1, 101])).map(nodes.Int),
        "String": st.sampled_from([*world.cursors, "", "Room", "1", "bogus"]).map(nodes.String),
        "Decimal": st.sampled_from(["45.5", "60", "100.00", "x"]).map(nodes.String),
        "_Any": representation,
    }
    roots = st.lists(st.sampled_from(ROOT_FIELDS), min_size=1, max_size=3, unique=True)
    return roots.flatmap(
        lambda fields: queries(
            GRAPHQL_SCHEMA,
            fields=sorted(fields),
            custom_scalars=scalars,
            print_ast=lambda document: document,
        )
    )


class _Decorator:
    """Rewrites one generated document, drawing each choice from hypothesis."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.variables: dict[str, Any] = {}
        self.definitions: list[VariableDefinitionNode] = []
        self.fragments: list[FragmentDefinitionNode] = []
        self.count = 0

    def chance(self, percent: int) -> bool:
        return self.draw(st.integers(0, 99)) < percent

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def condition(self) -> list[DirectiveNode]:
        """Maybe an @include or @skip, on a literal or on a variable of its own."""
        if not self.chance(20):
            return []
        value: Any
        if self.chance(70):
            variable = self.name("b")
            self.variables[variable] = self.draw(st.booleans())
            self.definitions.append(
                VariableDefinitionNode(
                    variable=VariableNode(name=NameNode(value=variable)),
                    type=graphql.parse_type("Boolean!"),
                )
            )
            value = VariableNode(name=NameNode(value=variable))
        else:
            value = BooleanValueNode(value=self.draw(st.booleans()))
        directive = self.draw(st.sampled_from(["include", "skip"]))
        return [
            DirectiveNode(
                name=NameNode(value=directive),
                arguments=(ArgumentNode(name=NameNode(value="if"), value=value),),
            )
        ]

    def arguments(self, node: FieldNode, definition: Any) -> tuple[ArgumentNode, ...]:
        """Some literal arguments become variables of the operation."""
        arguments = []
        for literal in node.arguments or ():
            argument = literal
            if definition is not None and self.chance(40):
                variable = self.name("v")
                argument_type = definition.args[argument.name.value].type
                self.variables[variable] = graphql.value_from_ast_untyped(argument.value)
                self.definitions.append(
                    VariableDefinitionNode(
                        variable=VariableNode(name=NameNode(value=variable)),
                        type=graphql.parse_type(str(argument_type)),
                    )
                )
                argument = ArgumentNode(
                    name=argument.name, value=VariableNode(name=NameNode(value=variable))
                )
            arguments.append(argument)
        return tuple(arguments)

    def selections(self, selection_set: SelectionSetNode | None, parent: Any) -> Any:
        if selection_set is None:
            return None
        out: list[Any] = []
        for selection in selection_set.selections:
            if isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                on = GRAPHQL_SCHEMA.get_type(condition.name.value) if condition else parent
                out.append(
                    InlineFragmentNode(
                        type_condition=condition,
                        directives=tuple(self.condition()),
                        selection_set=self.selections(selection.selection_set, on),
                    )
                )
                continue
            assert isinstance(selection, FieldNode)
            fields = getattr(parent, "fields", {})
            definition = fields.get(selection.name.value)
            child_type = graphql.get_named_type(definition.type) if definition else None
            node = FieldNode(
                alias=NameNode(value=self.name("a")) if self.chance(15) else selection.alias,
                name=selection.name,
                arguments=self.arguments(selection, definition),
                directives=tuple(self.condition()),
                selection_set=self.selections(selection.selection_set, child_type),
            )
            copies = [node, node] if self.chance(10) else [node]
            for copy in copies:
                out.append(self.wrapped(copy, parent))
        return SelectionSetNode(selections=tuple(out))

    def wrapped(self, node: FieldNode, parent: Any) -> Any:
        """The field as is, or inside an inline fragment, or behind a named fragment."""
        choice = self.draw(st.integers(0, 99))
        if choice < 75:
            return node
        inner = SelectionSetNode(selections=(node,))
        if choice < 85:
            on = NamedTypeNode(name=NameNode(value=parent.name)) if self.chance(50) else None
            return InlineFragmentNode(
                type_condition=on, directives=tuple(self.condition()), selection_set=inner
            )
        name = self.name("F")
        self.fragments.append(
            FragmentDefinitionNode(
                name=NameNode(value=name),
                type_condition=NamedTypeNode(name=NameNode(value=parent.name)),
                directives=(),
                selection_set=inner,
            )
        )
        return FragmentSpreadNode(name=NameNode(value=name), directives=tuple(self.condition()))


@st.composite
def _cases(draw: st.DrawFn, world: World) -> Case:
    document = draw(_documents(world))
    [operation] = document.definitions
    assert isinstance(operation, OperationDefinitionNode)
    decorator = _Decorator(draw)
    selection_set = decorator.selections(operation.selection_set, GRAPHQL_SCHEMA.query_type)
    operation_name = draw(st.sampled_from([None, "Differential"]))
    rewritten = DocumentNode(
        definitions=(
            OperationDefinitionNode(
                operation=operation.operation,
                name=NameNode(value=operation_name) if operation_name else None,
                variable_definitions=tuple(decorator.definitions),
                directives=(),
                selection_set=selection_set,
            ),
            *decorator.fragments,
        )
    )
    return Case(graphql.print_ast(rewritten), decorator.variables, operation_name)


# ---------------------------------------------------------------------------------------------
# The comparison.


def _flipped(case: Case) -> Case:
    """The same document with every Boolean variable negated: what @include/@skip select
    changes, and a plan compiled for the first values must not answer for these."""
    variables = {k: not v if isinstance(v, bool) else v for k, v in case.variables.items()}
    return Case(case.query, variables, case.operation_name)


async def _answers(world: World, case: Case, executor: str) -> list[Any]:
    """The first viewer runs the document cold (no plan compiled for it yet); everything after
    runs warm, other viewers included, so a plan (or anything else cached) that carried one
    request's values or viewer into another would show."""
    execution._plans.clear()
    runs = [("first", case), ("again", case), ("flipped", _flipped(case)), ("back", case)]
    answers = []
    for viewer, token in world.tokens.items():
        for run, request in runs:
            answers.append((viewer, run, await world.post(executor, request, token)))
    return answers


def _compare(world: World, loop: _Loop, case: Case) -> None:
    outcomes = {}
    for executor in ("compiled", "reference"):
        outcomes[executor] = loop.run(_answers(world, case, executor))
    # Per viewer and run, so that a failure says which one differs.
    for compiled, reference in zip(outcomes["compiled"], outcomes["reference"], strict=True):
        assert compiled == reference, (case, compiled, reference)


# Always run: the order history with every decoration at once (explicit examples, before the
# generated ones), and the minimal documents of differences found (none so far).
REGRESSIONS: list[Case] = [
    Case(
        """fragment P on Product { id name price { amount currency } kind @skip(if: $s) }
        query History($first: Int, $i: Boolean!, $s: Boolean!) {
          orders(first: $first) { edges { cursor node { __typename id status
            total { amount } mine: user { name @include(if: $i) email }
            items { quantity product { ...P ... on Product { sku stock } } }
            ... @include(if: $i) { items { subtotal { amount } product { name } } } } }
            pageInfo { hasNextPage endCursor } } }""",
        {"first": 3, "i": True, "s": False},
        "History",
    ),
    Case(
        """query History($first: Int, $i: Boolean!, $s: Boolean!) {
          orders(first: $first) { edges { node { id items { product { ...P } } } } } }
        fragment P on Product { id name @include(if: $i) kind @skip(if: $s) }""",
        {"first": 4, "i": False, "s": True},
        "History",
    ),
]


# Items as JSON (gql.schema.types.orders.items_json): warm, the plan of an order history takes
# its items as PostgreSQL wrote them. Every field they can hold, aliases and fragments; then
# what keeps the objects: a selection met twice, a field PostgreSQL does not render.
_ITEMS_EVERYTHING = """{ orders(first: 10) { edges { node { id items {
  __typename id quantity unitPrice { amount currency __typename } subtotal { currency amount }
  product { __typename id sku name description kind stock price { amount currency } } } } } } }"""
REGRESSIONS += [
    Case(_ITEMS_EVERYTHING),
    Case(
        """query H { orders { edges { node { a: items { q: quantity p: product { n: name } }
          ... on Order { a: items { p: product { kind } } } } } } }""",
        operation_name="H",
    ),
    Case(
        """fragment I on OrderItem { quantity product { ...P } } fragment P on Product { id name }
        { orders(first: 3) { edges { node { items { ...I ... on OrderItem { subtotal { amount } } }
          } } } }"""
    ),
    Case("{ orders { edges { node { a: items { quantity } b: items { product { name } } } } } }"),
    Case("{ orders { edges { node { items { id } } } e: edges { node { items { quantity } } } } }"),
    Case("{ orders { edges { node { items { product { name createdAt } } } } } }"),
    # Orders as JSON, items included: every field an order can hold.
    Case(
        """{ orders(first: 10) { edges { cursor node { __typename id status createdAt
          updatedAt idempotencyKey total { amount currency __typename } items { quantity } } }
          pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } }"""
    ),
    # A user keeps the orders objects: their items alone come as JSON.
    Case("{ orders { edges { node { user { name } items { quantity product { name } } } } } }"),
    # A page of products as JSON: every field a product can hold; then aliases, fragments.
    Case(
        """{ products(first: 5, orderBy: PRICE_ASC) { edges { cursor node { __typename id sku
          name description kind stock price { amount currency __typename } } }
          pageInfo { hasNextPage endCursor } } }"""
    ),
    Case(
        """fragment P on Product { n: name price { amount } }
        { p: products(first: 3) { e: edges { node { ...P ... on Product { kind n: name } } } } }"""
    ),
    Case("{ products { edges { node { name createdAt } } } }"),
]


# Point reads (gql/engine/point_reads.py): the compiled executor answers a warm `product(id:)`
# alone without graphql-core's `execute`, and steps aside for everything it does not fit.
_POINT_READ = "query P($id: ID!) { product(id: $id) { id name kind stock price { amount } } }"
_PRODUCT = to_global_id("Product", 1)
REGRESSIONS += [
    Case(_POINT_READ, {"id": _PRODUCT}, "P"),
    Case(_POINT_READ, {"id": to_global_id("Product", 999_999)}),
    Case(_POINT_READ, {"id": to_global_id("Order", 1)}, "P"),
    Case(_POINT_READ, {"id": "not-an-id"}),
    Case(_POINT_READ, {"id": 1}),
    Case(_POINT_READ, {"id": None}),
    Case(_POINT_READ, {}),
    Case(_POINT_READ, {"id": _PRODUCT, "unused": True}),
    Case(f'{{ item: product(id: "{_PRODUCT}") {{ __typename id name }} }}'),
    Case(f'query {{ product(id: "{_PRODUCT}") {{ ...F kind }} }} fragment F on Product {{ sku }}'),
    Case(
        "query P($id: ID!, $b: Boolean!) { product(id: $id) { id name @include(if: $b) } }",
        {"id": _PRODUCT, "b": True},
    ),
    Case("query P($id: ID) { product(id: $id) { id } }", {"id": _PRODUCT}),
    Case('query P($id: ID! = "x") { product(id: $id) { id } }', {"id": _PRODUCT}),
    Case(
        "query P($id: ID!) { product(id: $id) { id } } query Q { me { id } }",
        {"id": _PRODUCT},
        "P",
    ),
    Case(
        "query P($id: ID!) { a: product(id: $id) { id } b: product(id: $id) { name } }",
        {"id": _PRODUCT},
    ),
]


def test_compiled_and_reference_executors_answer_alike(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    items_as_json = _count_calls(monkeypatch, order_reads, "items_json_by_order_ids")
    order_pages = _count_calls(monkeypatch, order_reads, "list_orders")
    product_pages = _count_calls(monkeypatch, catalog, "search_products")
    loop = _Loop()
    world = loop.run(World.open(database_url))
    ran: list[Case] = []
    try:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.filter_too_much,
            ],
        )
        @given(_cases(world))
        def check(case: Case) -> None:
            ran.append(case)
            _compare(world, loop, case)

        for regression in REGRESSIONS:
            check = example(regression)(check)
        check()
    finally:
        loop.run(world.close())
        loop.close()
    assert len(ran) >= min(EXAMPLES, 200), len(ran)
    # The JSON path was compared, not only the objects' (it exists on warm runs only).
    assert items_as_json
    assert any(arguments.get("json") is not None for arguments in order_pages)
    assert any(arguments.get("json") is not None for arguments in product_pages)


def _count_calls(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[dict[str, Any]]:
    """Each call of `module.name` (the real one) appends its keyword arguments to the list."""
    calls: list[dict[str, Any]] = []
    function = getattr(module, name)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return await function(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls
