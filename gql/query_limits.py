"""Query limits checked before execution: depth, aliases and estimated cost as a validation
rule (so the verdict is cached with the rest of validation), tokens at parse time (so a huge
document is not even parsed). Every refusal has the code QUERY_TOO_COMPLEX."""

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationRule,
    get_named_type,
)

from core.settings import Settings
from gql.errors import QUERY_TOO_COMPLEX

PAGE_ARGUMENT = "first"


@dataclass(frozen=True, slots=True)
class QueryLimits:
    max_depth: int
    max_aliases: int
    max_cost: int
    default_page_size: int
    max_page_size: int


@dataclass(frozen=True, slots=True)
class Measure:
    depth: int = 0
    aliases: int = 0
    cost: int = 0


class _Measurer:
    """Walks an operation with fragments expanded; each fragment is measured once (memo), and a
    fragment cycle counts as nothing here (NoFragmentCyclesRule reports it)."""

    def __init__(self, schema: GraphQLSchema, document: DocumentNode, limits: QueryLimits) -> None:
        self.schema = schema
        self.limits = limits
        self.fragments = {
            d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
        }
        self._memo: dict[str, Measure] = {}
        self._visiting: set[str] = set()

    def operation(self, operation: OperationDefinitionNode) -> Measure:
        root = self.schema.get_root_type(operation.operation)
        return self.selection_set(operation.selection_set, root)

    def selection_set(
        self, selection_set: SelectionSetNode, parent: GraphQLNamedType | None
    ) -> Measure:
        depth = aliases = cost = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                part = self.field(selection, parent)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                type_ = self.schema.get_type(condition.name.value) if condition else parent
                part = self.selection_set(selection.selection_set, type_)
            elif isinstance(selection, FragmentSpreadNode):
                part = self.fragment(selection.name.value)
            else:  # pragma: no cover - graphql-core has no other selection kind
                continue
            depth = max(depth, part.depth)
            aliases += part.aliases
            cost += part.cost
        return Measure(depth, aliases, cost)

    def field(self, node: FieldNode, parent: GraphQLNamedType | None) -> Measure:
        name = node.name.value
        aliases = 1 if node.alias is not None else 0
        if name == "__typename":
            return Measure(1, aliases, 0)
        field_def = None
        if isinstance(parent, (GraphQLObjectType, GraphQLInterfaceType)):
            field_def = parent.fields.get(name)
        child_type = get_named_type(field_def.type) if field_def is not None else None
        child = (
            self.selection_set(node.selection_set, child_type)
            if node.selection_set is not None
            else Measure()
        )
        multiplier = 1
        if field_def is not None and PAGE_ARGUMENT in field_def.args:
            multiplier = self.page_size(node)
        return Measure(1 + child.depth, aliases + child.aliases, 1 + multiplier * child.cost)

    def page_size(self, node: FieldNode) -> int:
        for argument in node.arguments or ():
            if argument.name.value == PAGE_ARGUMENT:
                if isinstance(argument.value, IntValueNode):
                    return max(0, int(argument.value.value))
                # A variable: validation is cached per document, so count the worst case.
                return self.limits.max_page_size
        return self.limits.default_page_size

    def fragment(self, name: str) -> Measure:
        known = self._memo.get(name)
        if known is not None:
            return known
        definition = self.fragments.get(name)
        if definition is None or name in self._visiting:
            return Measure()
        self._visiting.add(name)
        try:
            type_ = self.schema.get_type(definition.type_condition.name.value)
            measure = self.selection_set(definition.selection_set, type_)
        finally:
            self._visiting.discard(name)
        self._memo[name] = measure
        return measure


@lru_cache(maxsize=16)
def query_limits_rule(limits: QueryLimits) -> type[ValidationRule]:
    """One rule class per set of limits, made once: the validation cache is keyed by the rule
    classes, so a fresh class per request would defeat it."""

    class QueryLimitsRule(ValidationRule):
        def enter_document(self, node: DocumentNode, *_args: Any) -> None:
            measurer = _Measurer(self.context.schema, node, limits)
            for definition in node.definitions:
                if isinstance(definition, OperationDefinitionNode):
                    self.check(definition, measurer.operation(definition))

        def check(self, operation: OperationDefinitionNode, measure: Measure) -> None:
            name = operation.name.value if operation.name else "the operation"
            refusals = []
            if measure.depth > limits.max_depth:
                refusals.append(
                    f"{name} is {measure.depth} levels deep; the maximum is {limits.max_depth}"
                )
            if measure.aliases > limits.max_aliases:
                refusals.append(
                    f"{name} uses {measure.aliases} aliases; the maximum is {limits.max_aliases}"
                )
            if measure.cost > limits.max_cost:
                refusals.append(
                    f"{name} has an estimated cost of {measure.cost}; the maximum is "
                    f"{limits.max_cost} (a list field costs its `first` times its selection)"
                )
            for message in refusals:
                self.report_error(
                    GraphQLError(message, operation, extensions={"code": QUERY_TOO_COMPLEX})
                )

    return QueryLimitsRule


_rules_by_settings: dict[int, tuple[Settings, type[ValidationRule]]] = {}


def query_limits_rule_for(settings: Settings) -> type[ValidationRule]:
    """The rule of these settings' limits, looked up by the settings object itself on the hot
    path (an app keeps one), built through `query_limits_rule` on first use."""
    cached = _rules_by_settings.get(id(settings))
    if cached is not None and cached[0] is settings:
        return cached[1]
    rule = query_limits_rule(
        QueryLimits(
            max_depth=settings.max_query_depth,
            max_aliases=settings.max_query_aliases,
            max_cost=settings.max_query_cost,
            default_page_size=settings.default_page_size,
            max_page_size=settings.max_page_size,
        )
    )
    _rules_by_settings[id(settings)] = (settings, rule)
    return rule
