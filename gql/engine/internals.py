"""The private internals of Strawberry, graphql-core, `limits` and aiodataloader we rely on,
and nothing else.

Pinned against strawberry-graphql 0.341.2, graphql-core 3.3.2, limits 5.8.0 and aiodataloader
0.4.3 (constraints.txt). Every private attribute, undocumented key or "for internal use only"
hook of those libraries that the edge touches is read here and only here, behind a small typed
function or class; the rest of `gql/` imports these names instead.
`tests/test_library_internals.py` (and `tests/test_loaders.py`) pin the behaviour each one is
relied on for, so an upgrade that changes it fails there, loudly, rather than somewhere in the
compiled executor (docs/execution.md, "Private library internals we rely on").

What each name wraps, and who relies on it:

- `graphql_schema_of`: Strawberry's `Schema._schema`, the graphql-core schema operations run
  on (`_entities` cost in `gql.schema.federation`, executing a prepared document).
- `raw_info`: Strawberry's `Info._raw_info`, graphql-core's resolve info (`gql.engine.selection`
  reads its field nodes and fragments).
- `strawberry_field_of`: the `"strawberry-definition"` key (`DEFINITION_BACKREF`) of a GraphQL
  field's extensions, the StrawberryField behind it (`gql.engine.plans`: the Python attribute
  and the class that declares the field).
- `input_definitions`: the same key on input object types, the Strawberry definitions whose
  `from_input` hook `gql.engine.inputs` sets (tests/test_input_builders.py finds them all).
- `is_default_resolver`: the `_is_default` mark Strawberry sets on a field's resolver
  (`gql.engine.plans`: a plain attribute read, which a plan may inline).
- `StrawberryExecutionContext`: `strawberry.schema.schema.StrawberryGraphQLCoreExecutionContext`,
  the base of `gql.engine.plans.CompiledExecutionContext`, which overrides graphql-core's
  `complete_object_value(return_type, field_details_list, info, path, result, ...)`.
- `collect_subfields`: graphql-core's `Executor.collect_subfields` (private, memoized), the
  fields a plan completes.
- `fragments_of`: graphql-core's `Executor.fragments`, fragment definitions with the
  signatures of their variables.
- `FieldDetails`, `FragmentDetails`, `GroupedFieldSet`: from
  `graphql.execution.collect_fields`, "for internal use only".
- `is_awaitable`: `strawberry.execution.optimized_is_awaitable`, the awaitable check
  Strawberry's own execution passes to graphql-core, typed as `execute(is_awaitable=)` wants.
- `moving_window_acquire`: the `limits` Redis storage's bridge (`storage.bridge`): its
  registered moving-window Lua script (`lua_acquire_moving_window`, called with `[key]` and
  `[timestamp, limit, expiry, amount]` as its own `acquire_entry` does), its key prefixing and
  its client (`gql.transport.ratelimit` sends the hits of one loop turn as one pipeline).
- `CheapDataLoader`: aiodataloader's `DataLoader` given its state (`loop`, `_cache`, `_queue`)
  without its `__init__`, and its queue (`Loader`, `dispatch_queue`) scheduled without the
  task it makes for the hop (`gql.schema.loaders`; `tests/test_loaders.py` compares batches,
  values and the starting state with the library's own loader).
"""

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeGuard, cast

from aiodataloader import DataLoader, Loader, dispatch_queue
from graphql import (
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLObjectType,
    GraphQLResolveInfo,
    GraphQLSchema,
)
from graphql.execution.collect_fields import FieldDetails, FragmentDetails, GroupedFieldSet
from strawberry import Schema
from strawberry.execution import optimized_is_awaitable
from strawberry.schema.schema import (
    StrawberryGraphQLCoreExecutionContext as StrawberryExecutionContext,
)
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types import Info
from strawberry.types.base import StrawberryObjectDefinition
from strawberry.types.field import StrawberryField

__all__ = [
    "CheapDataLoader",
    "FieldDetails",
    "FragmentDetails",
    "GroupedFieldSet",
    "StrawberryExecutionContext",
    "collect_subfields",
    "fragments_of",
    "graphql_schema_of",
    "input_definitions",
    "is_awaitable",
    "is_default_resolver",
    "raw_info",
    "strawberry_field_of",
]

# The key under which Strawberry keeps, in a GraphQL field's extensions, the StrawberryField it
# was made from.
_DEFINITION_KEY = GraphQLCoreConverter.DEFINITION_BACKREF


def graphql_schema_of(schema: Schema) -> GraphQLSchema:
    """The graphql-core schema behind a Strawberry one: the one its operations execute on."""
    return schema._schema


def raw_info(info: Info[Any, Any]) -> GraphQLResolveInfo[Any]:
    """graphql-core's resolve info behind Strawberry's `Info`: all the field nodes merged under
    the response key, and the operation's fragment definitions by name. (Strawberry's own
    NamedTuple with graphql-core's fields, not an instance of `GraphQLResolveInfo`.)"""
    return info._raw_info


def strawberry_field_of(field: GraphQLField) -> StrawberryField | None:
    """The StrawberryField a GraphQL field was made from (its `python_name`, its `origin`
    class), or None for a field Strawberry did not make (`__typename`, introspection)."""
    definition = field.extensions.get(_DEFINITION_KEY)
    return definition if isinstance(definition, StrawberryField) else None


def input_definitions(schema: GraphQLSchema) -> list[StrawberryObjectDefinition]:
    """The Strawberry definitions of the schema's input object types."""
    return [
        definition
        for graphql_type in schema.type_map.values()
        if isinstance(graphql_type, GraphQLInputObjectType)
        and isinstance(
            definition := graphql_type.extensions.get(_DEFINITION_KEY), StrawberryObjectDefinition
        )
    ]


def is_default_resolver(field: GraphQLField) -> bool:
    """Whether the field is resolved by Strawberry's default resolver, a plain read of the
    attribute named by its `python_name`, rather than by a resolver of ours."""
    return bool(getattr(field.resolve, "_is_default", False))


def collect_subfields(
    context: StrawberryExecutionContext,
    object_type: GraphQLObjectType,
    details: Sequence[FieldDetails],
) -> GroupedFieldSet:
    """The fields selected on `object_type` below the field nodes of `details`, as graphql-core
    executes them: by response key, in document order, fragments merged in, fields that the
    request's variables `@skip` (or do not `@include`) left out."""
    return context.collect_subfields(object_type, list(details)).grouped_field_set


def fragments_of(context: StrawberryExecutionContext) -> Mapping[str, FragmentDetails]:
    """The operation's fragments by name: each definition with its variable signatures."""
    return context.fragments


is_awaitable = cast(Callable[[Any], TypeGuard[Awaitable[Any]]], optimized_is_awaitable)
"""Strawberry's fast awaitable check (the one its own execution passes to graphql-core),
typed as graphql-core's `execute(is_awaitable=...)` expects."""


def moving_window_acquire(storage: Any) -> tuple[Any, Callable[[str], str], Any]:
    """For a `limits` async Redis storage (redis-py implementation): the moving-window acquire
    script (call it as `script([key], [timestamp, limit, expiry, amount], client=...)`), the
    function prefixing a key as the storage does, and the redis-py client it runs on."""
    bridge = storage.bridge
    return bridge.lua_acquire_moving_window, bridge.prefixed_key, bridge.get_connection()


class CheapDataLoader(DataLoader[Any, Any]):
    """aiodataloader's DataLoader with no options, made and scheduled more cheaply: what each
    step leaves behind is the library's."""

    def __init__(self) -> None:
        # The state `DataLoader.__init__` gives a loader with no options, without its check
        # that `batch_load_fn` is a coroutine function (asyncio.iscoroutinefunction, as much
        # as the rest of `load`): `__init_subclass__` checks it once per class.
        self.loop = asyncio.get_event_loop()
        self._cache: dict[Any, asyncio.Future[Any]] = {}
        self._queue: list[Loader] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        batch_load_fn = getattr(cls, "batch_load_fn", None)
        assert batch_load_fn is None or asyncio.iscoroutinefunction(batch_load_fn), cls

    def get_cache_key(self, key: Any) -> Any:
        return key

    def do_resolve_reject(self, key: Any, future: "asyncio.Future[Any]") -> None:
        """Queue the key; the queue's first key schedules its dispatch two turns of the loop
        from now, when the library's would run (it schedules a callback that starts a task),
        so loads batch as they did, without the task the library makes for the hop."""
        self._queue.append(Loader(key=key, future=future))
        if len(self._queue) == 1:
            self.loop.call_soon(self.loop.call_soon, dispatch_queue, self)
