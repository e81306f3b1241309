"""A graphql-core ExecutionContext that completes objects through compiled plans.

graphql-core completes every field of every object through the same general machinery (resolve
info, awaitable checks, error paths), which dominates the cost of a list of orders with items
and products (docs/execution.md). Below a root field, our objects are plain: scalar attributes,
and relations that `prefetch_orders` (gql/schema/types/orders.py) attached for the whole level.
For such selections a plan is compiled once per (type, field nodes) and then applied as
straight attribute reads.

A plan also takes, at any object-valued field, an `orjson.Fragment` as the field's completed
value: JSON PostgreSQL built for exactly the selection the plan notes there (`planned_relation`,
gql/schema/json_levels.py).

Anything a plan cannot express exactly (arguments, directives, abstract types, resolvers other
than prefetched relations) is left to graphql-core; a relation that was not prefetched, or a
null where the schema says non-null, makes the plan step aside for that object at run time, so
the general path produces exactly what it would have (loads, errors with paths).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from graphql import (
    GraphQLBoolean,
    GraphQLEnumType,
    GraphQLID,
    GraphQLInt,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLResolveInfo,
    GraphQLScalarType,
    GraphQLString,
    get_nullable_type,
)
from graphql.language import FieldNode
from graphql.pyutils import AwaitableOrValue, Path
from orjson import Fragment
from strawberry import Info

from core.bounded import BoundedCache
from gql.engine.internals import (
    FieldDetails,
    StrawberryExecutionContext,
    collect_subfields,
    fragments_of,
    is_default_resolver,
    raw_info,
    strawberry_field_of,
)
from gql.engine.walk import walk

PREFETCHED_PREFIX = "prefetched_"
MAX_PLANS = 2000

Plan = Callable[[Any], dict[str, Any]]


@dataclass(frozen=True, eq=False)
class Selected:
    """A field as a plan completes it: its response key, its Python name (None for
    `__typename`) and, for an object or a list of objects, the fields selected below it,
    collected as the plan collected them (fragments merged; no directive or argument
    anywhere, or there would be no plan). Compared and hashed by identity: each plan makes
    its own, once."""

    key: str
    name: str | None
    below: tuple["Selected", ...] = ()
    constant: str | None = None  # what the plan writes for `__typename`: the type's name


# The path of an object-valued field (or list of objects) from the plan's object, by Python
# names, and its selection (None when the path is selected twice under different keys).
Relations = dict[tuple[str, ...], tuple[Selected, ...] | None]


@dataclass(frozen=True, slots=True)
class _Compiled:
    nodes: tuple[FieldNode, ...]  # kept alive, so that the ids in the key stay unique
    plan: Plan | None
    relations: Relations


class NotReady(Exception):
    """The value does not fit the plan: let graphql-core complete it."""


class NotCompilable(Exception):
    """The selection needs the general executor."""


# (type, ids of field nodes) -> what was compiled for them (a plan, or None: not compilable)
_plans: BoundedCache[tuple[GraphQLObjectType, tuple[int, ...]], _Compiled]
_plans = BoundedCache(MAX_PLANS)


def _not_ready() -> Any:
    raise NotReady


def _cached(object_type: GraphQLObjectType, nodes: Sequence[FieldNode]) -> _Compiled | None:
    cached = _plans.get((object_type, tuple(map(id, nodes))))
    if cached is not None and all(a is b for a, b in zip(cached.nodes, nodes, strict=True)):
        return cached
    return None


def compiled_plan(object_type: GraphQLObjectType, nodes: tuple[FieldNode, ...]) -> Plan | None:
    """The plan completing `object_type` for these field nodes, if an execution already
    compiled one (None too when it found the selection not compilable)."""
    cached = _cached(object_type, nodes)
    return None if cached is None else cached.plan


def planned_relation(info: Info[Any, Any], path: tuple[str, ...]) -> tuple[Selected, ...] | None:
    """What the compiled plan completing the value of the field being resolved selects below
    the object-valued field at `path` (Python field names from that value, e.g. `("edges",
    "node", "items")`), if an execution already compiled one. Such a plan, and the general
    path of this execution context, take a value found there as an `orjson.Fragment` (JSON
    built for exactly this selection) as completed (see gql/schema/json_levels.py)."""
    raw = raw_info(info)
    object_type = get_nullable_type(raw.return_type)
    if not isinstance(object_type, GraphQLObjectType):
        return None
    cached = _cached(object_type, raw.field_nodes)
    if cached is None or cached.plan is None:
        return None
    return cached.relations.get(path)


class _PlanWriter:
    """Writes one Python function per object selection: straight-line attribute reads, checks
    and leaf conversions, so completing a field costs no call of its own (cf. graphql-jit)."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {
            "NotReady": NotReady,
            "_not_ready": _not_ready,
            "Fragment": Fragment,
        }
        self.sources: list[str] = []
        self.relations: Relations = {}
        self._count = 0

    def relation(self, path: tuple[str, ...], selected: tuple[Selected, ...]) -> None:
        """Note the selection below an object-valued field (None if met twice)."""
        self.relations[path] = None if path in self.relations else selected

    def name(self, prefix: str, value: Any = None) -> str:
        self._count += 1
        name = f"{prefix}{self._count}"
        if value is not None:
            self.namespace[name] = value
        return name

    def function(self, object_type: GraphQLObjectType, body: list[str], result: str) -> str:
        """A function of `s` (the source object) running `body`, returning `result`."""
        name = self.name(f"complete_{object_type.name}_")
        lines = [f"def {name}(s):", *(f"    {line}" for line in body), f"    return {result}"]
        self.sources.append("\n".join(lines))
        return name

    def build(self, entry: str) -> Plan:
        exec("\n\n".join(self.sources), self.namespace)
        plan: Plan = self.namespace[entry]
        return plan


def _read(writer: _PlanWriter, parent: GraphQLObjectType, field_name: str) -> tuple[str, str, bool]:
    """An expression reading the field from `s`, the field's Python name, and whether it is a
    prefetched relation (which may be missing, or prefetched as JSON)."""
    field = parent.fields[field_name]
    if field.args:
        raise NotCompilable
    definition = strawberry_field_of(field)
    if definition is None:
        raise NotCompilable
    if is_default_resolver(field):
        attribute = definition.python_name
        if not attribute.isidentifier():
            raise NotCompilable
        return f"s.{attribute}", attribute, False
    prefetched = PREFETCHED_PREFIX + definition.python_name
    origin = getattr(definition, "origin", None)
    if origin is None or prefetched not in getattr(origin, "__dataclass_fields__", {}):
        raise NotCompilable
    return f"s.{prefetched}", definition.python_name, True


def _leaf_expression(
    writer: _PlanWriter, leaf_type: GraphQLScalarType | GraphQLEnumType, value: str
) -> str:
    serialize = writer.name("serialize_", leaf_type.serialize)
    if isinstance(leaf_type, GraphQLEnumType):
        # Rows hold enum values as plain strings, which Strawberry's enum type serializes by a
        # slow general path: look the name up by value (a StrEnum member hashes as its value).
        names = {definition.value: name for name, definition in leaf_type.values.items()}
        lookup = writer.name("enum_names_", names)
        return f"({lookup}.get({value}) or {serialize}({value}))"
    if leaf_type is GraphQLString or leaf_type is GraphQLID:
        return f"({value} if {value}.__class__ is str else {serialize}({value}))"
    if leaf_type is GraphQLInt:
        return f"({value} if {value}.__class__ is int else {serialize}({value}))"
    if leaf_type is GraphQLBoolean:
        return f"({value} if {value}.__class__ is bool else {serialize}({value}))"
    return f"{serialize}({value})"


class CompiledExecutionContext(StrawberryExecutionContext):
    def complete_object_value(
        self,
        return_type: GraphQLObjectType,
        field_details_list: list[FieldDetails],
        info: GraphQLResolveInfo[Any],
        path: Path,
        result: Any,
        *args: Any,
    ) -> AwaitableOrValue[dict[str, Any]]:
        if result.__class__ is Fragment:
            # JSON built for this selection, met by the general path where a plan stepped
            # aside for an object above it: already complete (see `planned_relation`).
            return result  # type: ignore[return-value]
        plan = self._plan(return_type, field_details_list)
        if plan is not None:
            try:
                return plan(result)
            except NotReady:
                pass
        return super().complete_object_value(
            return_type, field_details_list, info, path, result, *args
        )

    def _plan(self, object_type: GraphQLObjectType, details: Sequence[FieldDetails]) -> Plan | None:
        nodes = tuple(detail.node for detail in details)
        cached = _cached(object_type, nodes)
        if cached is not None:
            return cached.plan
        writer = _PlanWriter()
        try:
            entry, _ = self._write_object(writer, object_type, details, ())
            plan: Plan | None = writer.build(entry)
        except NotCompilable:
            plan = None
        _plans.put((object_type, tuple(map(id, nodes))), _Compiled(nodes, plan, writer.relations))
        return plan

    def _write_object(
        self,
        writer: _PlanWriter,
        object_type: GraphQLObjectType,
        details: Sequence[FieldDetails],
        path: tuple[str, ...],
    ) -> tuple[str, tuple[Selected, ...]]:
        """The name of the function completing the object, and the fields it selects. `path`:
        the Python names leading to the object from the plan's own."""
        for detail in details:
            if detail.node.directives or self._fragments_have_directives(detail.node):
                raise NotCompilable
        grouped = collect_subfields(self, object_type, details)
        body: list[str] = []
        items: list[str] = []
        selected: list[Selected] = []
        for index, (response_key, field_details) in enumerate(grouped.items()):
            for detail in field_details:
                node = detail.node
                if node.directives or node.arguments or detail.defer_usage is not None:
                    raise NotCompilable
            field_name = field_details[0].node.name.value
            if field_name == "__typename":
                items.append(f"{response_key!r}: {object_type.name!r}")
                selected.append(Selected(response_key, None, constant=object_type.name))
                continue
            field = object_type.fields.get(field_name)
            if field is None:
                raise NotCompilable
            read, name, prefetched = _read(writer, object_type, field_name)
            value = f"v{index}"
            body.append(f"{value} = {read}")
            if prefetched and not isinstance(field.type, GraphQLNonNull):
                # None means "not prefetched" here: let the resolver load it.
                body.append(f"if {value} is None: raise NotReady")
            completed, below = self._write_value(
                writer, field.type, field_details, value, (*path, name)
            )
            if below:
                # JSON built for exactly this selection (`planned_relation`) is taken as is.
                completed = f"({value} if {value}.__class__ is Fragment else {completed})"
                writer.relation((*path, name), below)
            items.append(f"{response_key!r}: {completed}")
            selected.append(Selected(response_key, name, below))
        function = writer.function(object_type, body, "{" + ", ".join(items) + "}")
        return function, tuple(selected)

    def _fragments_have_directives(self, node: FieldNode) -> bool:
        """Whether a selection at this level (a field, or a fragment, or a field inside one)
        carries @include/@skip: what it selects then depends on the variables, and a plan is
        reused across requests. Fields the variables skipped are not even collected, so this
        must look at the document, not at what was collected for this request."""
        if node.selection_set is None:
            return False
        fragments = fragments_of(self)
        definitions = {name: details.definition for name, details in fragments.items()}
        for reached in walk(node.selection_set, definitions):
            if reached.node.directives:
                return True
            definition = reached.definition
            if definition is not None and (
                definition.directives
                # fragment arguments depend on the request too
                or fragments[definition.name.value].variable_signatures
            ):
                return True
        return False

    def _write_value(
        self,
        writer: _PlanWriter,
        output_type: GraphQLOutputType,
        details: Sequence[FieldDetails],
        value: str,
        path: tuple[str, ...],
    ) -> tuple[str, tuple[Selected, ...]]:
        """An expression completing `value` (a plain name, so reading it twice is free), and
        the fields selected below it (none for a leaf)."""
        non_null = isinstance(output_type, GraphQLNonNull)
        nullable_type = get_nullable_type(output_type)
        below: tuple[Selected, ...] = ()
        if isinstance(nullable_type, GraphQLList):
            item, below = self._write_value(writer, nullable_type.of_type, details, "x", path)
            inner = f"[{item} for x in {value}]"
        elif isinstance(nullable_type, (GraphQLScalarType, GraphQLEnumType)):
            inner = _leaf_expression(writer, nullable_type, value)
        elif isinstance(nullable_type, GraphQLObjectType):
            function, below = self._write_object(writer, nullable_type, details, path)
            inner = f"{function}({value})"
        else:
            raise NotCompilable  # interfaces and unions need run-time type resolution
        if non_null:
            return f"({inner} if {value} is not None else _not_ready())", below
        return f"(None if {value} is None else {inner})", below
