"""A graphql-core ExecutionContext that completes objects through compiled plans.

graphql-core completes every field of every object through the same general machinery (resolve
info, awaitable checks, error paths), which dominates the cost of a list of orders with items
and products (DESIGN §7). Below a root field, our objects are plain: scalar attributes, and
relations that `gql.prefetch` attached for the whole level. For such selections a plan is
compiled once per (type, field nodes) and then applied as straight attribute reads.

Anything a plan cannot express exactly (arguments, directives, abstract types, resolvers other
than prefetched relations) is left to graphql-core; a relation that was not prefetched, or a
null where the schema says non-null, makes the plan step aside for that object at run time, so
the general path produces exactly what it would have (loads, errors with paths).
"""

from collections.abc import Callable, Sequence
from typing import Any

from graphql import (
    GraphQLEnumType,
    GraphQLID,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLScalarType,
    GraphQLString,
)
from graphql.language import FieldNode
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

PREFETCHED_PREFIX = "prefetched_"
MAX_PLANS = 2000

Plan = Callable[[Any], dict[str, Any]]
Completer = Callable[[Any], Any]


class NotReady(Exception):
    """The value does not fit the plan: let graphql-core complete it."""


class NotCompilable(Exception):
    """The selection needs the general executor."""


# (type, ids of field nodes) -> (the nodes, kept alive so ids stay unique; the plan or None)
_plans: dict[tuple[GraphQLObjectType, tuple[int, ...]], tuple[tuple[FieldNode, ...], Plan | None]]
_plans = {}


def _strawberry_field(field: Any) -> Any:
    return field.extensions.get("strawberry-definition")


def _getter(parent: GraphQLObjectType, field_name: str) -> Callable[[Any], Any]:
    field = parent.fields[field_name]
    if field.args:
        raise NotCompilable
    definition = _strawberry_field(field)
    if definition is None:
        raise NotCompilable
    if getattr(field.resolve, "_is_default", False):
        attribute = definition.python_name
        return lambda source: getattr(source, attribute)
    prefetched = PREFETCHED_PREFIX + definition.python_name
    origin = getattr(definition, "origin", None)
    if origin is None or prefetched not in getattr(origin, "__dataclass_fields__", {}):
        raise NotCompilable

    def read_prefetched(source: Any) -> Any:
        value = getattr(source, prefetched)
        if value is None:
            raise NotReady
        return value

    return read_prefetched


def _leaf(leaf_type: GraphQLScalarType | GraphQLEnumType) -> Completer:
    serialize = leaf_type.serialize
    if leaf_type is GraphQLString or leaf_type is GraphQLID:
        return lambda value: value if type(value) is str else serialize(value)
    return serialize


class CompiledExecutionContext(StrawberryGraphQLCoreExecutionContext):
    def complete_object_value(  # type: ignore[override]
        self,
        return_type: GraphQLObjectType,
        field_details_list: Sequence[Any],
        info: Any,
        path: Any,
        result: Any,
        *args: Any,
    ) -> Any:
        plan = self._plan(return_type, field_details_list)
        if plan is not None:
            try:
                return plan(result)
            except NotReady:
                pass
        return super().complete_object_value(
            return_type, field_details_list, info, path, result, *args
        )

    def _plan(self, object_type: GraphQLObjectType, details: Sequence[Any]) -> Plan | None:
        nodes = tuple(detail.node for detail in details)
        key = (object_type, tuple(map(id, nodes)))
        cached = _plans.get(key)
        if cached is not None and all(a is b for a, b in zip(cached[0], nodes, strict=True)):
            return cached[1]
        try:
            plan: Plan | None = self._compile_object(object_type, details)
        except NotCompilable:
            plan = None
        if len(_plans) >= MAX_PLANS:
            _plans.clear()
        _plans[key] = (nodes, plan)
        return plan

    def _compile_object(self, object_type: GraphQLObjectType, details: Sequence[Any]) -> Plan:
        for detail in details:
            if detail.node.directives:
                raise NotCompilable
        grouped = self.collect_subfields(object_type, list(details))[0]
        steps: list[tuple[str, Callable[[Any], Any], Completer]] = []
        type_name = object_type.name
        for response_key, field_details in grouped.items():
            for detail in field_details:
                node = detail.node
                if node.directives or node.arguments or detail.defer_usage is not None:
                    raise NotCompilable
            field_name = field_details[0].node.name.value
            if field_name == "__typename":
                steps.append((response_key, lambda _source: type_name, lambda value: value))
                continue
            field = object_type.fields.get(field_name)
            if field is None:
                raise NotCompilable
            getter = _getter(object_type, field_name)
            steps.append((response_key, getter, self._completer(field.type, field_details)))

        def complete(source: Any) -> dict[str, Any]:
            return {key: finish(read(source)) for key, read, finish in steps}

        return complete

    def _completer(self, output_type: GraphQLOutputType, details: Sequence[Any]) -> Completer:
        if isinstance(output_type, GraphQLNonNull):
            inner = self._completer(output_type.of_type, details)

            def non_null(value: Any) -> Any:
                if value is None:
                    raise NotReady
                return inner(value)

            return non_null
        inner = self._nullable_completer(output_type, details)
        return lambda value: None if value is None else inner(value)

    def _nullable_completer(self, output_type: Any, details: Sequence[Any]) -> Completer:
        if isinstance(output_type, GraphQLList):
            item = self._completer(output_type.of_type, details)
            return lambda values: [item(value) for value in values]
        if isinstance(output_type, (GraphQLScalarType, GraphQLEnumType)):
            return _leaf(output_type)
        if isinstance(output_type, GraphQLObjectType):
            return self._compile_object(output_type, details)
        raise NotCompilable  # interfaces and unions need run-time type resolution
