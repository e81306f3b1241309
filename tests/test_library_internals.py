"""The private internals of Strawberry and graphql-core that gql/engine/internals.py wraps.

Each test states a behaviour the edge relies on (docs/execution.md): if an upgrade of Strawberry
or graphql-core changes it, the test fails here, by name, instead of the compiled executor
answering wrongly somewhere else. No database: small schemas, plus the served one."""

import asyncio
import time
import uuid
from typing import Any

import pytest
import strawberry
from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    GraphQLObjectType,
    GraphQLResolveInfo,
    GraphQLSchema,
)
from limits import parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from strawberry.schema.config import StrawberryConfig

from gql.engine.internals import (
    FieldDetails,
    FragmentDetails,
    StrawberryExecutionContext,
    collect_subfields,
    fragments_of,
    graphql_schema_of,
    is_awaitable,
    is_default_resolver,
    moving_window_acquire,
    raw_info,
    strawberry_field_of,
)
from gql.engine.plans import PREFETCHED_PREFIX
from gql.schema.build import schema as served_schema
from gql.schema.types.orders import Order, OrderItem
from tests.edge_support import REDIS_URL

_infos: list[GraphQLResolveInfo[Any]] = []


@strawberry.type
class Thing:
    name: str
    created_at: int

    @strawberry.field
    def upper(self) -> str:
        return self.name.upper()


@strawberry.type
class Query:
    @strawberry.field
    def thing(self, info: strawberry.Info) -> Thing:
        _infos.append(raw_info(info))
        return Thing(name="a", created_at=1)


def _object_type(schema: strawberry.Schema, name: str) -> GraphQLObjectType:
    found = graphql_schema_of(schema).get_type(name)
    assert isinstance(found, GraphQLObjectType), name
    return found


def test_graphql_schema_of_is_the_graphql_core_schema_operations_run_on() -> None:
    schema = strawberry.Schema(query=Query)
    graphql_schema = graphql_schema_of(schema)
    assert isinstance(graphql_schema, GraphQLSchema)
    assert graphql_schema is graphql_schema_of(schema)  # the schema itself, not a copy
    assert graphql_schema.query_type is not None
    assert graphql_schema.query_type.name == "Query"
    assert set(_object_type(schema, "Thing").fields) == {"name", "createdAt", "upper"}

    _infos.clear()
    assert schema.execute_sync("{ thing { name } }").data == {"thing": {"name": "a"}}
    assert _infos[0].schema is graphql_schema

    # The served (federation) schema: the one `_entities` is costed against.
    served = graphql_schema_of(served_schema)
    assert served.query_type is not None
    assert {"_entities", "_service", "orders", "node"} <= set(served.query_type.fields)
    assert {"items", "user", "status"} <= set(_object_type(served_schema, "Order").fields)


def test_strawberry_marks_default_resolved_fields_and_links_their_definitions() -> None:
    """A plan reads `s.<python_name>` in place of a field whose resolver is Strawberry's default,
    and `s.prefetched_<python_name>` in place of a resolver of a field declared on a class
    that has such a dataclass field."""
    schema = strawberry.Schema(query=Query)
    thing = _object_type(schema, "Thing")
    assert is_default_resolver(thing.fields["name"])
    assert is_default_resolver(thing.fields["createdAt"])
    assert not is_default_resolver(thing.fields["upper"])
    assert not is_default_resolver(_object_type(schema, "Query").fields["thing"])

    # The default resolver is exactly a read of the attribute named by `python_name`.
    created_at = strawberry_field_of(thing.fields["createdAt"])
    assert created_at is not None
    assert created_at.python_name == "created_at"
    assert created_at.origin is Thing
    resolve = thing.fields["createdAt"].resolve
    assert resolve is not None
    assert resolve(Thing(name="b", created_at=7), None) == 7

    order = _object_type(served_schema, "Order")
    assert is_default_resolver(order.fields["status"])
    assert is_default_resolver(order.fields["createdAt"])
    for name, origin in [("items", Order), ("user", Order)]:
        assert not is_default_resolver(order.fields[name])
        definition = strawberry_field_of(order.fields[name])
        assert definition is not None
        assert definition.python_name == name
        assert definition.origin is origin
        assert PREFETCHED_PREFIX + name in Order.__dataclass_fields__
    product = strawberry_field_of(_object_type(served_schema, "OrderItem").fields["product"])
    assert product is not None
    assert product.origin is OrderItem


def test_strawberry_field_of_is_none_for_fields_strawberry_did_not_make() -> None:
    from graphql import GraphQLField, GraphQLString  # noqa: PLC0415

    assert strawberry_field_of(GraphQLField(GraphQLString)) is None
    assert not is_default_resolver(GraphQLField(GraphQLString))


def test_raw_info_is_graphql_cores_info_with_every_field_node_and_the_fragments() -> None:
    """`gql.engine.selection` merges the selections of every field node under the response key and
    looks fragment spreads up in `fragments`."""
    schema = strawberry.Schema(query=Query)
    _infos.clear()
    result = schema.execute_sync(
        "query Q { thing { name } ...F thing { createdAt } }"
        " fragment F on Query { thing { upper } }"
    )
    assert result.errors is None
    [info] = _infos  # one resolver call for the three nodes
    # Strawberry's own NamedTuple (not a subclass) with graphql-core's fields first, in order.
    assert info._fields[: len(GraphQLResolveInfo._fields)] == GraphQLResolveInfo._fields
    assert info.field_name == "thing"
    assert info.parent_type.name == "Query"
    assert [node.name.value for node in info.field_nodes] == ["thing", "thing", "thing"]
    assert all(isinstance(node, FieldNode) for node in info.field_nodes)
    assert [
        [selection.name.value for selection in node.selection_set.selections]  # type: ignore[union-attr]
        for node in info.field_nodes
    ] == [["name"], ["upper"], ["createdAt"]]  # in document order, the fragment's in its place
    assert isinstance(info.fragments["F"], FragmentDefinitionNode)


class _Recording(StrawberryExecutionContext):
    """Records what graphql-core hands `complete_object_value` and what `collect_subfields`
    makes of it: the hook and the helper of `gql.engine.plans.CompiledExecutionContext`."""

    calls: list[dict[str, Any]] = []
    answer: dict[str, Any] | None = None

    def complete_object_value(
        self,
        return_type: GraphQLObjectType,
        field_details_list: list[FieldDetails],
        info: GraphQLResolveInfo[Any],
        path: Any,
        result: Any,
        *args: Any,
    ) -> Any:
        grouped = collect_subfields(self, return_type, field_details_list)
        _Recording.calls.append(
            {
                "type": return_type.name,
                "details": field_details_list,
                "info": info,
                "result": result,
                "grouped": grouped,
                "fragments": dict(fragments_of(self)),
            }
        )
        if _Recording.answer is not None:
            return _Recording.answer
        return super().complete_object_value(
            return_type, field_details_list, info, path, result, *args
        )


@pytest.fixture
def recording() -> type[_Recording]:
    _Recording.calls = []
    _Recording.answer = None
    return _Recording


DOCUMENT = """
query Q($x: Boolean!) {
  thing {
    createdAt
    a: name
    ...F
    ... on Thing { upper }
    gone: name @skip(if: true)
    maybe: name @include(if: $x)
    createdAt
  }
}
fragment F on Thing { name }
"""


@pytest.mark.parametrize(
    ("x", "keys"),
    [
        (False, ["createdAt", "a", "name", "upper"]),
        (True, ["createdAt", "a", "name", "upper", "maybe"]),
    ],
)
def test_collect_subfields_gives_response_keys_in_order_without_skipped_fields(
    recording: type[_Recording], x: bool, keys: list[str]
) -> None:
    schema = strawberry.Schema(query=Query, execution_context_class=recording)
    result = schema.execute_sync(DOCUMENT, variable_values={"x": x})
    assert result.errors is None
    # Called for the object below the root field, not for the root: plans start there.
    [call] = recording.calls
    assert call["type"] == "Thing"
    assert isinstance(call["result"], Thing)
    assert call["info"].field_name == "thing"
    [detail] = call["details"]
    assert isinstance(detail, FieldDetails)
    assert detail.node.name.value == "thing"
    assert detail.defer_usage is None

    grouped = call["grouped"]
    assert list(grouped) == keys
    assert len(grouped["createdAt"]) == 2  # both selections of the key
    for response_key, details in grouped.items():
        for field_details in details:
            assert isinstance(field_details, FieldDetails)
            assert isinstance(field_details.node, FieldNode)
            assert field_details.defer_usage is None
        assert (details[0].node.alias or details[0].node.name).value == response_key

    fragment = call["fragments"]["F"]
    assert isinstance(fragment, FragmentDetails)
    assert isinstance(fragment.definition, FragmentDefinitionNode)
    assert fragment.definition.name.value == "F"
    assert not fragment.variable_signatures  # falsy for a fragment without variables


async def test_a_deferred_field_carries_its_defer_usage(recording: type[_Recording]) -> None:
    """Plans step aside for a field with a `defer_usage`: it is how `@defer` shows."""
    schema = strawberry.Schema(
        query=Query,
        execution_context_class=recording,
        config=StrawberryConfig(enable_experimental_incremental_execution=True),
    )
    result = await schema.execute("{ thing { createdAt ... @defer { name } } }")
    assert getattr(result, "initial_result", None) is not None  # an incremental result
    [call] = recording.calls
    grouped = call["grouped"]
    assert [detail.defer_usage for detail in grouped["createdAt"]] == [None]
    [deferred] = grouped["name"]
    assert deferred.defer_usage is not None
    assert deferred.defer_usage.directive_node.name.value == "defer"


def test_complete_object_value_answers_with_what_the_override_returns(
    recording: type[_Recording],
) -> None:
    """A plan's dict is the object's completed value, used as is."""
    recording.answer = {"name": "from the plan"}
    schema = strawberry.Schema(query=Query, execution_context_class=recording)
    result = schema.execute_sync("{ thing { name } }")
    assert result.errors is None
    assert result.data == {"thing": {"name": "from the plan"}}


def test_is_awaitable_tells_awaitables_from_plain_values() -> None:
    thing = Thing(name="a", created_at=1)
    values: list[object] = [None, 1, "s", b"b", 1.5, True, [], {}, (), thing]
    for value in values:
        assert not is_awaitable(value)

    async def coroutine() -> None:
        return None

    pending = coroutine()
    awaitable: object = pending
    assert is_awaitable(awaitable)
    pending.close()
    loop = asyncio.new_event_loop()
    try:
        assert is_awaitable(loop.create_future())
    finally:
        loop.close()


async def test_the_moving_window_script_counts_as_the_storage_does() -> None:
    """Hits sent through the adapter's script land where `limits`' own moving window reads
    them: same key prefix, same arguments, same verdicts (against the Redis of the tests)."""
    prefix = f"test-internals-{uuid.uuid4().hex[:12]}"
    storage = RedisStorage(
        "async+" + REDIS_URL, implementation="redispy", key_prefix=prefix, wrap_exceptions=True
    )
    limiter = MovingWindowRateLimiter(storage)
    item = parse("3/minute")
    script, prefixed_key, client = moving_window_acquire(storage)
    key = item.key_for("caller")
    try:
        assert prefixed_key(key) == f"{prefix}:{key}"
        verdicts = [
            bool(await script([prefixed_key(key)], [time.time(), 3, 60, 1], client=client))
            for _ in range(4)
        ]
        assert verdicts == [True, True, True, False]
        # The library's own reading of the window sees the three hits, and refuses a fourth.
        stats = await limiter.get_window_stats(item, "caller")
        assert stats.remaining == 0
        assert not await limiter.hit(item, "caller")
    finally:
        await client.delete(prefixed_key(key))
