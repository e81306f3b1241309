"""Query limits checked before execution: depth, aliases, estimated cost and the work of
validation itself as a validation rule (so the verdict is cached with the rest of validation)
that runs before graphql-core's own rules, tokens at parse time (so a huge document is not
even parsed), and the cost of `_entities` representations when they are known, at execution.
Every refusal has the code QUERY_TOO_COMPLEX."""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentSpreadNode,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLUnionType,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationRule,
    get_named_type,
)
from graphql.validation.validate import ValidationAbortedError
from strawberry.types.nodes import FragmentSpread, InlineFragment, SelectedField, Selection

from core.settings import Settings
from gql.engine.walk import Fragments, fragment_definitions, walk
from gql.errors import QUERY_TOO_COMPLEX

PAGE_ARGUMENT = "first"
# A page is `first` or `last` rows (a field refuses both at once): either counts.
PAGE_SIZE_ARGUMENTS = ("first", "last")
# A connection's count walks the whole list: it costs what a page of the default size does,
# once per connection (not multiplied by the page size, as the connection's other fields are).
COUNT_FIELD = "totalCount"


@dataclass(frozen=True, slots=True)
class QueryLimits:
    max_depth: int
    max_aliases: int
    max_cost: int
    default_page_size: int
    max_page_size: int
    max_selections: int = 1000
    max_merge_pairs: int = 1000


class QueryTooComplex(ValidationAbortedError):
    """A limit refusal that ends validation at once: graphql-core's `validate` stops its
    visit on this error class and returns it as the last error (`ValidationAbortedError` is
    how its own rules abort), so the rules that come after, OverlappingFieldsCanBeMerged
    among them, never see a document refused here."""

    def __init__(self, message: str, node: Any = None) -> None:
        super().__init__(message, node, extensions={"code": QUERY_TOO_COMPLEX})


@dataclass(frozen=True, slots=True)
class Measure:
    depth: int = 0
    aliases: int = 0
    cost: int = 0
    per_list: int = 0
    """Cost paid once per list rather than per item: a connection's `totalCount` (one count
    of the whole list), added by the list field above it without its page-size multiplier."""


class _Measurer:
    """Walks an operation with fragments expanded (`gql.engine.walk`); each named fragment is
    measured once (memo), which keeps the pass linear, and a fragment cycle counts as nothing
    here (NoFragmentCyclesRule reports it)."""

    def __init__(self, schema: GraphQLSchema, document: DocumentNode, limits: QueryLimits) -> None:
        self.schema = schema
        self.limits = limits
        self.fragments = fragment_definitions(document)
        self._memo: dict[str, Measure] = {}
        self._visiting: set[str] = set()

    def operation(self, operation: OperationDefinitionNode) -> Measure:
        root = self.schema.get_root_type(operation.operation)
        measure = self.selection_set(operation.selection_set, root)
        # Whatever was not charged to a list above it is charged once, here.
        return Measure(measure.depth, measure.aliases, measure.cost + measure.per_list)

    def selection_set(
        self, selection_set: SelectionSetNode, parent: GraphQLNamedType | None
    ) -> Measure:
        depth = aliases = cost = per_list = 0
        # Inline fragments expanded by the walker, named ones measured once each (memo).
        for reached in walk(selection_set, self.fragments, spreads=False):
            node = reached.node
            if isinstance(node, FieldNode):
                condition = reached.condition
                type_ = parent if condition is None else self.schema.get_type(condition)
                part = self.field(node, type_)
            elif isinstance(node, FragmentSpreadNode):
                part = self.fragment(node.name.value)
            else:  # an inline fragment: its selections come next, with its type condition
                continue
            depth = max(depth, part.depth)
            aliases += part.aliases
            cost += part.cost
            per_list += part.per_list
        return Measure(depth, aliases, cost, per_list)

    def field(self, node: FieldNode, parent: GraphQLNamedType | None) -> Measure:
        name = node.name.value
        aliases = 1 if node.alias is not None else 0
        if name == "__typename":
            return Measure(1, aliases, 0)
        if name == COUNT_FIELD:
            return Measure(1, aliases, 1, per_list=self.limits.default_page_size)
        field_def = None
        if isinstance(parent, (GraphQLObjectType, GraphQLInterfaceType)):
            field_def = parent.fields.get(name)
        child_type = get_named_type(field_def.type) if field_def is not None else None
        child = (
            self.selection_set(node.selection_set, child_type)
            if node.selection_set is not None
            else Measure()
        )
        if field_def is not None and PAGE_ARGUMENT in field_def.args:
            cost = 1 + self.page_size(node) * child.cost + child.per_list
            return Measure(1 + child.depth, aliases + child.aliases, cost)
        return Measure(1 + child.depth, aliases + child.aliases, 1 + child.cost, child.per_list)

    def page_size(self, node: FieldNode) -> int:
        sizes = []
        for argument in node.arguments or ():
            if argument.name.value in PAGE_SIZE_ARGUMENTS:
                if isinstance(argument.value, IntValueNode):
                    sizes.append(max(0, int(argument.value.value)))
                else:
                    # A variable (or null): validation is cached per document, so count the
                    # worst case.
                    sizes.append(self.limits.max_page_size)
        return max(sizes) if sizes else self.limits.default_page_size

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


# A level of the merged operation: its selection sets, each with the fragments being expanded
# around it (a spread of one of those would be a cycle).
_Level = list[tuple[SelectionSetNode, frozenset[str]]]


def merge_work_refusal(
    operation: OperationDefinitionNode,
    fragments: Fragments,
    limits: QueryLimits,
) -> str | None:
    """Why the operation would cost validation too much, or None: one pass over it with
    fragments expanded where they are spread (a fragment inside itself is skipped: the cycle
    is NoFragmentCyclesRule's to report), merging same-named fields level by level as the
    executor does.

    Two counts. Selections (fields, fragment spreads, inline fragments), every spread
    expanded again, so the bound also holds for any code that walks the selections naively;
    the pass stops as soon as it is over, so it costs at most that many steps. And merge
    pairs: at one level, two selections of the same response name, or two fragment spreads,
    are a pair the spec's FieldsInSetCanMerge check compares, which makes that check
    quadratic (`me { id } me { id }` … 300 times: 89,700 pairs over two levels)."""
    budget = limits.max_selections
    pairs = 0
    name = operation.name.value if operation.name else "the operation"
    levels: list[_Level] = [[(operation.selection_set, frozenset())]]
    while levels:
        pending = levels.pop()
        children: dict[str, _Level] = {}
        occurrences: dict[str, int] = {}
        spreads = 0
        # The level's selection sets and the fragments in them, each set's own selections
        # first, the last set reached first.
        for selection_set, expanding in reversed(pending):
            for reached in walk(selection_set, fragments, expanding=expanding, by_set=True):
                budget -= 1
                if budget < 0:
                    return (
                        f"{name} has more than {limits.max_selections} selections (fields and "
                        "fragments, a fragment counted each time it is spread)"
                    )
                selection = reached.node
                if isinstance(selection, FieldNode):
                    key = (selection.alias or selection.name).value
                    occurrences[key] = occurrences.get(key, 0) + 1
                    if selection.selection_set is not None:
                        children.setdefault(key, []).append(
                            (selection.selection_set, reached.expanding)
                        )
                elif isinstance(selection, FragmentSpreadNode):
                    spreads += 1
        # Same-named fields pairwise, and every two fragment spreads.
        pairs += sum(count * (count - 1) // 2 for count in occurrences.values())
        pairs += spreads * (spreads - 1) // 2
        if pairs > limits.max_merge_pairs:
            return (
                f"{name} repeats selections too often: validation would compare more than "
                f"{limits.max_merge_pairs} pairs of same-named fields or of fragments at one "
                "level (the executor merges them anyway: select each field once)"
            )
        levels.extend(children.values())
    return None


def query_limits_rule(limits: QueryLimits) -> type[ValidationRule]:
    """The validation rule of a set of limits (graphql-core takes rules as classes)."""

    class QueryLimitsRule(ValidationRule):
        """Placed first among the rules (see gql.engine.documents); its whole work is done on
        entering the document, before any other rule has visited a selection, and a refusal
        aborts validation (QueryTooComplex) so that no other rule runs on that document."""

        def enter_document(self, node: DocumentNode, *_args: Any) -> None:
            measurer = _Measurer(self.context.schema, node, limits)
            refusals: list[tuple[str, OperationDefinitionNode]] = []
            for definition in node.definitions:
                if isinstance(definition, OperationDefinitionNode):
                    # The selection and merge counts first: they bound every later walk.
                    refusal = merge_work_refusal(definition, measurer.fragments, limits)
                    if refusal is not None:
                        refusals.append((refusal, definition))
                        continue
                    refusals.extend(
                        (message, definition)
                        for message in self.refusals(definition, measurer.operation(definition))
                    )
            if refusals:
                *reported, (message, operation) = refusals
                for earlier, earlier_operation in reported:
                    self.report_error(QueryTooComplex(earlier, earlier_operation))
                raise QueryTooComplex(message, operation)

        def refusals(self, operation: OperationDefinitionNode, measure: Measure) -> list[str]:
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
            return refusals

    return QueryLimitsRule


def query_limits_rule_for(settings: Settings) -> type[ValidationRule]:
    """The rule of these settings' limits (built once per app, by its document cache)."""
    return query_limits_rule(query_limits_of(settings))


def query_limits_of(settings: Settings) -> QueryLimits:
    return QueryLimits(
        max_depth=settings.max_query_depth,
        max_aliases=settings.max_query_aliases,
        max_cost=settings.max_query_cost,
        default_page_size=settings.default_page_size,
        max_page_size=settings.max_page_size,
        max_selections=settings.max_query_selections,
        max_merge_pairs=settings.max_query_merge_pairs,
    )


# --- `_entities`: costed at execution, where its representations are known ------------------


def entities_cost(
    schema: GraphQLSchema,
    selected: Iterable[Selection],
    type_names: Iterable[str | None],
    limits: QueryLimits,
) -> int:
    """The estimated cost of an `_entities` field (`selected`: Strawberry's selections of it)
    for representations of these `__typename`s: like a list field, 1 plus each item, where a
    representation costs 1 (its lookup) plus the selection on its own type (only the inline
    fragments and fragments that apply to that type). The selections were bounded by
    `max_selections` at validation, so walking them is cheap."""
    selections = [
        inner
        for field in selected
        if isinstance(field, SelectedField)
        for inner in field.selections
    ]
    per_type: dict[str | None, int] = {}
    total = 1
    for type_name in type_names:
        cost = per_type.get(type_name)
        if cost is None:
            entity = schema.get_type(type_name) if type_name is not None else None
            cost = 1
            if isinstance(entity, GraphQLObjectType):
                cost += _selections_cost(schema, selections, entity, entity, limits)
            per_type[type_name] = cost
        total += cost
    return total


def _selections_cost(
    schema: GraphQLSchema,
    selections: Iterable[Selection],
    parent: GraphQLNamedType | None,
    runtime: GraphQLObjectType | None,
    limits: QueryLimits,
) -> int:
    """The cost rule's formula (as `_Measurer`), on Strawberry's selections, whose arguments
    hold the request's values. With `runtime`, fragments are counted only if they apply to
    that object type (the level of an `_entities` item)."""
    cost = 0
    for selection in selections:
        if isinstance(selection, SelectedField):
            if selection.name == "__typename":
                continue
            if selection.name == COUNT_FIELD:
                cost += 1 + limits.default_page_size
                continue
            field_def = None
            if isinstance(parent, (GraphQLObjectType, GraphQLInterfaceType)):
                field_def = parent.fields.get(selection.name)
            child_type = get_named_type(field_def.type) if field_def is not None else None
            child = _selections_cost(schema, selection.selections, child_type, None, limits)
            multiplier = 1
            if field_def is not None and PAGE_ARGUMENT in field_def.args:
                arguments = selection.arguments
                sizes = [arguments[name] for name in PAGE_SIZE_ARGUMENTS if name in arguments]
                multiplier = max(
                    (_page_size(size, limits) for size in sizes),
                    default=limits.default_page_size,
                )
            cost += 1 + multiplier * child
        elif isinstance(selection, (InlineFragment, FragmentSpread)):
            condition = selection.type_condition
            type_ = schema.get_type(condition) if condition else parent
            if runtime is not None and not _applies(schema, type_, runtime):
                continue
            cost += _selections_cost(schema, selection.selections, type_, runtime, limits)
    return cost


def _page_size(value: object, limits: QueryLimits) -> int:
    if value is None:
        return limits.default_page_size
    if isinstance(value, int):
        # Beyond the maximum the field refuses the page (and loads nothing).
        return max(0, min(value, limits.max_page_size))
    return limits.max_page_size


def _applies(
    schema: GraphQLSchema, condition: GraphQLNamedType | None, runtime: GraphQLObjectType
) -> bool:
    if condition is None or condition is runtime:
        return True
    if isinstance(condition, (GraphQLInterfaceType, GraphQLUnionType)):
        return schema.is_sub_type(condition, runtime)
    return False
