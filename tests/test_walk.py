"""The one fragment-expanding walker (gql.engine.walk) and the bounded cache (core.bounded)."""

from graphql import (
    FieldNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    parse,
)

from core.bounded import BoundedCache
from gql.engine.walk import Reached, fragment_definitions, type_condition, walk


def _level(
    query: str, *, spreads: bool = True, by_set: bool = False
) -> tuple[list[Reached], SelectionSetNode]:
    document = parse(query)
    operation = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
    fragments = fragment_definitions(document)
    reached = list(walk(operation.selection_set, fragments, spreads=spreads, by_set=by_set))
    return reached, operation.selection_set


def _names(reached: list[Reached]) -> list[str]:
    """Fields by name, spreads as `...Name`, inline fragments as `... on Type` (or `...`)."""
    names = []
    for item in reached:
        node = item.node
        if isinstance(node, FieldNode):
            names.append(node.name.value)
        elif isinstance(node, FragmentSpreadNode):
            names.append(f"...{node.name.value}")
        elif isinstance(node, InlineFragmentNode):
            condition = node.type_condition
            names.append(f"... on {condition.name.value}" if condition else "...")
    return names


def test_named_and_inline_fragments_are_expanded_in_document_order() -> None:
    reached, _ = _level(
        """
        query { a ...F ... on Query { d } e }
        fragment F on Query { b ...G }
        fragment G on Query { c }
        """
    )
    assert _names(reached) == ["a", "...F", "b", "...G", "c", "... on Query", "d", "e"]
    by_name = {name: item for name, item in zip(_names(reached), reached, strict=True)}
    assert by_name["a"].expanding == frozenset()
    assert by_name["b"].expanding == {"F"}
    assert by_name["c"].expanding == {"F", "G"}
    assert by_name["d"].expanding == frozenset()
    assert by_name["...G"].definition is not None
    assert by_name["...G"].definition.name.value == "G"


def test_by_set_each_set_comes_whole_and_the_last_fragment_reached_first() -> None:
    reached, _ = _level(
        """
        query { a ...F ... on Query { d } e }
        fragment F on Query { b ...G }
        fragment G on Query { c }
        """,
        by_set=True,
    )
    assert _names(reached) == ["a", "...F", "... on Query", "e", "d", "b", "...G", "c"]


def test_a_walk_stays_on_its_level() -> None:
    reached, _ = _level("query { me { id orders { id } } }")
    assert _names(reached) == ["me"]


def test_a_fragment_spread_twice_is_expanded_each_time() -> None:
    reached, _ = _level("query { ...F ...F } fragment F on Query { a }")
    assert _names(reached) == ["...F", "a", "...F", "a"]


def test_cycles_and_unknown_fragments_are_yielded_but_not_entered() -> None:
    reached, _ = _level(
        """
        query { ...A ...Missing }
        fragment A on Query { a ...B }
        fragment B on Query { b ...A }
        """
    )
    assert _names(reached) == ["...A", "a", "...B", "b", "...A", "...Missing"]
    assert reached[-1].definition is None
    # A path carried over from the level above counts too.
    document = parse("query { me { ...A } } fragment A on User { id me2: id ...A }")
    fragments = fragment_definitions(document)
    selection_set = fragments["A"].selection_set
    below = list(walk(selection_set, fragments, expanding=frozenset({"A"})))
    assert _names(below) == ["id", "id", "...A"]


def test_with_spreads_off_named_fragments_are_left_to_the_caller() -> None:
    reached, _ = _level(
        """
        query { ... on Query { ...F } x }
        fragment F on Query { a }
        """,
        spreads=False,
    )
    assert _names(reached) == ["... on Query", "...F", "x"]
    assert reached[1].definition is not None


def test_the_type_condition_in_force_is_given() -> None:
    reached, _ = _level(
        """
        query { a ... on Order { b ... { c } ... on Node { d } } ...F }
        fragment F on Product { e }
        """
    )
    conditions = {
        name: item.condition
        for name, item in zip(_names(reached), reached, strict=True)
        if name.isalpha()
    }
    assert conditions == {"a": None, "b": "Order", "c": "Order", "d": "Node", "e": "Product"}
    document = parse("query { ... on Order { a } ...F } fragment F on Product { e }")
    operation = document.definitions[0]
    assert isinstance(operation, OperationDefinitionNode)
    fragments = fragment_definitions(document)
    inline, spread = operation.selection_set.selections
    assert type_condition(inline, fragments) == "Order"
    assert type_condition(spread, fragments) == "Product"


def test_directives_are_neither_evaluated_nor_skipped_but_reported() -> None:
    reached, _ = _level(
        """
        query ($x: Boolean!) {
          a @include(if: $x) ...F @skip(if: $x) ... @include(if: $x) { b }
        }
        fragment F on Query @deprecated { c }
        """
    )
    assert _names(reached) == ["a", "...F", "c", "...", "b"]
    with_directives = [
        name for name, item in zip(_names(reached), reached, strict=True) if item.node.directives
    ]
    assert with_directives == ["a", "...F", "..."]
    spread = reached[1]
    assert spread.definition is not None and spread.definition.directives


def test_a_deep_nesting_of_fragments_needs_no_recursion() -> None:
    depth = 5000
    fragments = "\n".join(f"fragment F{n} on Query {{ ...F{n + 1} }}" for n in range(depth))
    query = f"query {{ ...F0 }} {fragments} fragment F{depth} on Query {{ leaf }}"
    document = parse(query, max_tokens=None)
    operation = document.definitions[0]
    assert isinstance(operation, OperationDefinitionNode)
    reached = list(walk(operation.selection_set, fragment_definitions(document)))
    assert _names(reached)[-1] == "leaf"
    assert len(reached[-1].expanding) == depth + 1


def test_a_bounded_cache_starts_over_when_full() -> None:
    cache: BoundedCache[str, int] = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 3)  # a key it holds: replaced, nothing dropped
    assert (cache.get("a"), cache.get("b"), len(cache)) == (3, 2, 2)
    cache.put("c", 4)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (None, None, 4)
    cache.discard("c")
    cache.discard("missing")
    assert len(cache) == 0
    cache.put("d", 5)
    cache.clear()
    cache.put("e", 6)  # `get` still reads the cache's one dict after `clear`
    assert cache.get("e") == 6 and dict(cache.items()) == {"e": 6}
