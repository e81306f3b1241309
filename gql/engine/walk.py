"""The one walker that expands the fragments of a selection set, shared by the query limits
(`query_limits`), the root fields counted for the rate limits (`documents`), the selection tree
read for prefetching and columns (`selection`) and the directive check of compiled plans
(`plans`).

`walk` yields every selection of one level of a document: the selection set's own, and those
of the inline fragments and named fragments spread in it (and in those, and so on), each with
the named fragments being expanded around it and the type condition in force. It does not go
below a field: a caller that wants the next level walks the field's selection set, passing on
`expanding` so that the path stays cycle-safe across levels.

- A named fragment is entered at most once per path: a spread of a fragment already being
  expanded around it is a cycle (NoFragmentCyclesRule reports it) and is not entered again;
  neither is a spread of an unknown fragment. Both are still yielded, as every spread is.
- With `spreads=False` named fragments are not entered at all, only yielded with their
  definition: a caller that memoizes per fragment (the limits pass, which that keeps linear)
  enters them itself.
- Directives are neither evaluated nor skipped: every selection is yielded whatever its
  `@include`/`@skip` (the walks here read the document, cached across requests, not one
  request's variables), and a caller that must know reads them from `node.directives` and
  `definition.directives`.

Order: document order (depth first, a fragment's selections where it is spread), as
graphql-core collects fields; the root fields counted for the rate limits are hit in it. Or,
with `by_set`, set by set (for the merge pass of the limits, see `walk`). No recursion: a
stack, so a deep nesting of fragments cannot exhaust Python's recursion limit.
"""

from collections.abc import Iterator, Mapping
from typing import NamedTuple

from graphql import (
    DocumentNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    SelectionNode,
    SelectionSetNode,
)

Fragments = Mapping[str, FragmentDefinitionNode]

NO_FRAGMENTS: frozenset[str] = frozenset()


class Reached(NamedTuple):
    """A selection reached by `walk`."""

    node: SelectionNode
    """A field, an inline fragment or a fragment spread."""
    expanding: frozenset[str]
    """The named fragments being expanded around it (its path, within and above this level)."""
    condition: str | None
    """The type condition in force: of the innermost fragment around it in this level that has
    one, else the `condition` the walk started with (None: the level's own type)."""
    definition: FragmentDefinitionNode | None = None
    """For a fragment spread, the fragment's definition (None if the document has none)."""


def fragment_definitions(document: DocumentNode) -> dict[str, FragmentDefinitionNode]:
    """The document's fragment definitions by name."""
    return {
        definition.name.value: definition
        for definition in document.definitions
        if isinstance(definition, FragmentDefinitionNode)
    }


def type_condition(selection: SelectionNode, fragments: Fragments) -> str | None:
    """The type condition a fragment (inline, or spread) puts on its own selections; None for
    a field, an inline fragment without one, or an unknown fragment."""
    if isinstance(selection, InlineFragmentNode):
        condition = selection.type_condition
        return condition.name.value if condition is not None else None
    if isinstance(selection, FragmentSpreadNode):
        fragment = fragments.get(selection.name.value)
        return fragment.type_condition.name.value if fragment is not None else None
    return None


def walk(
    selection_set: SelectionSetNode,
    fragments: Fragments,
    *,
    expanding: frozenset[str] = NO_FRAGMENTS,
    condition: str | None = None,
    spreads: bool = True,
    by_set: bool = False,
) -> Iterator[Reached]:
    """Every selection of the level `selection_set` starts, fragments expanded (see the module
    docstring). `expanding`: the named fragments already being expanded around it (a
    field's `Reached.expanding`, when walking below that field). `by_set`: each selection set's
    own selections first, then those of the fragments reached in it, the last reached first
    (the order the limits' merge pass has always taken, which decides which of two refusals
    a document gets), instead of document order."""
    stack = [(iter(selection_set.selections), expanding, condition)]
    while stack:
        # In document order a fragment's set interrupts its parent's, which resumes after it;
        # by set, a set is taken off the stack and read to its end.
        selections, expanding, condition = stack.pop() if by_set else stack[-1]
        for selection in selections:
            if isinstance(selection, InlineFragmentNode):
                yield Reached(selection, expanding, condition)
                inner = selection.type_condition
                stack.append(
                    (
                        iter(selection.selection_set.selections),
                        expanding,
                        inner.name.value if inner is not None else condition,
                    )
                )
                if by_set:
                    continue
                break
            if isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                definition = fragments.get(name)
                yield Reached(selection, expanding, condition, definition)
                if spreads and definition is not None and name not in expanding:
                    stack.append(
                        (
                            iter(definition.selection_set.selections),
                            expanding | {name},
                            definition.type_condition.name.value,
                        )
                    )
                    if not by_set:
                        break
                continue
            yield Reached(selection, expanding, condition)  # a field
        else:
            if not by_set:
                stack.pop()
