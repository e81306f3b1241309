"""Point reads: a query whose only root field reads one object by its ID, answered without
graphql-core's `execute`.

For `query ($id: ID!) { product(id: $id) { … } }` graphql-core builds an execution context,
coerces the variables, collects the root fields, and calls the field through Strawberry's
resolver wrapper (arguments converted into their Python types, extensions run), before the
one loader call that matters; together about a fifth of a served point read's CPU. Once the
general path has answered an operation of that shape and compiled the plan of its selection
(`gql.engine.plans`), this one calls the field's load with the ID and applies that plan.

It steps aside for anything else, before any work or after the load (whose row the general
path then finds in the loader's cache): another operation shape, a field without a registered
load, an ID that is not a string (graphql-core coerces or refuses it), a selection the plans
cannot express, a load that raised (the general path reports it with its path), a value the
plan does not fit. What it answers is what the general path answers, which
tests/test_executor_differential.py checks against the reference executor on generated
operations, cold and warm, for three viewers."""

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    GraphQLID,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    NamedTypeNode,
    NonNullTypeNode,
    OperationDefinitionNode,
    OperationType,
    StringValueNode,
    VariableNode,
)

from gql.engine.documents import Document
from gql.engine.plans import compiled_plan
from gql.schema.context import Context

PointLoad = Callable[[Context, str], Awaitable[Any]]
"""A root field's read of one object by its global ID, as its resolver does it."""


@dataclass(frozen=True, slots=True)
class _Shape:
    """A point-read operation: where its ID comes from, what reads it, how it is completed."""

    response_key: str
    field_node: FieldNode
    object_type: GraphQLObjectType
    load: PointLoad
    variable: str | None  # the ID is this variable's value, or else…
    literal: str | None  # …this string in the document


class PointReads:
    def __init__(self, schema: GraphQLSchema, loads: Mapping[str, PointLoad]) -> None:
        query_type = schema.query_type
        self._fields = query_type.fields if query_type is not None else {}
        self._loads = loads

    async def execute(
        self,
        document: Document,
        operation: OperationDefinitionNode,
        variables: Mapping[str, Any] | None,
        context: Context,
    ) -> ExecutionResult | None:
        """The operation's result, or None: the general path answers it."""
        # Worked out once per operation of the document, kept with it (`Document.per_operation`).
        shape = document.per_operation(operation, self._shape_of)
        plan = None if shape is None else compiled_plan(shape.object_type, (shape.field_node,))
        if shape is None or plan is None:
            return None
        raw = shape.literal if shape.variable is None else (variables or {}).get(shape.variable)
        if type(raw) is not str:
            return None
        try:
            value = await shape.load(context, raw)
            return ExecutionResult(
                data={shape.response_key: None if value is None else plan(value)}
            )
        # NotReady, or the load failed (an ID of another type, the database): the general path
        # answers as it would have, the error reported with its path (a failed query runs
        # once more there; a load only reads).
        except Exception:
            return None

    def _shape_of(self, _ast: DocumentNode, operation: OperationDefinitionNode) -> _Shape | None:
        """The point read `operation` is: a query without directives of one root field with a
        registered load, a nullable object type, an `id: ID!` argument from a string or the
        only variable."""
        node = _only_field(operation)
        if node is None:
            return None
        name = node.name.value
        load = self._loads.get(name)
        field = self._fields.get(name)
        if load is None or field is None or node.directives or node.selection_set is None:
            return None
        argument = field.args.get("id")
        # A nullable object type: null is an answer, not an error to raise.
        if not isinstance(field.type, GraphQLObjectType) or argument is None:
            return None
        if not isinstance(argument.type, GraphQLNonNull):
            return None
        source = _id_source(operation, node)
        if source is None:
            return None
        response_key = node.alias.value if node.alias else name
        return _Shape(response_key, node, field.type, load, *source)


def _only_field(operation: OperationDefinitionNode) -> FieldNode | None:
    """The root field of a query without directives that selects it alone."""
    if operation.operation is not OperationType.QUERY or operation.directives:
        return None
    selections = operation.selection_set.selections
    if len(selections) != 1 or not isinstance(selections[0], FieldNode):
        return None
    return selections[0]


def _id_source(
    operation: OperationDefinitionNode, node: FieldNode
) -> tuple[str | None, str | None] | None:
    """(variable, literal): where the field's one argument, `id`, comes from. A string in the
    document of an operation with no variables, or its only variable, an `ID` without default."""
    arguments = node.arguments or ()
    if len(arguments) != 1 or arguments[0].name.value != "id":
        return None
    value = arguments[0].value
    definitions = operation.variable_definitions or ()
    if isinstance(value, StringValueNode):
        return (None, value.value) if not definitions else None
    if not isinstance(value, VariableNode) or len(definitions) != 1:
        return None
    [definition] = definitions
    declared = definition.type
    if isinstance(declared, NonNullTypeNode):
        declared = declared.type
    if (
        definition.variable.name.value != value.name.value
        or definition.default_value is not None
        or definition.directives
        or not isinstance(declared, NamedTypeNode)
        or declared.name.value != GraphQLID.name
    ):
        return None
    return (value.name.value, None)
