"""What a client selected below a field, as a tree of field names with fragments merged in:
lets a list resolver fetch a whole level's relations at once.

Read from the operation's syntax tree and cached per field node: parsed documents are cached,
so the same query reuses its tree instead of walking (or converting) the selection each time.
A tree is a superset when directives skip fields: it only decides what to prefetch."""

from collections.abc import Mapping

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    SelectionNode,
    SelectionSetNode,
)

from gql.engine.internals import raw_info
from gql.schema.context import Info

FieldTree = dict[str, "FieldTree"]

MAX_CACHED_TREES = 4000
_trees: dict[tuple[int, str | None], tuple[FieldNode, FieldTree]] = {}


def selection_tree(info: Info, *, on_type: str | None = None) -> FieldTree:
    """The fields selected below the field being resolved. With `on_type`, only the fields
    and the fragments on that type at the first level count (`_entities` asks for several
    entity types in one list, each through its own fragment)."""
    raw = raw_info(info)
    node = raw.field_nodes[0]
    key = (id(node), on_type)
    cached = _trees.get(key)
    if cached is not None and cached[0] is node:
        return cached[1]
    tree: FieldTree = {}
    for field_node in raw.field_nodes:
        selection_set = field_node.selection_set
        if on_type is not None and selection_set is not None:
            selection_set = _only_on(selection_set, on_type, raw.fragments)
        _merge_into(tree, selection_set, raw.fragments)
    if len(_trees) >= MAX_CACHED_TREES:
        _trees.clear()
    _trees[key] = (node, tree)
    return tree


def _only_on(
    selection_set: SelectionSetNode, type_name: str, fragments: dict[str, FragmentDefinitionNode]
) -> SelectionSetNode:
    def applies(selection: SelectionNode) -> bool:
        if isinstance(selection, FragmentSpreadNode):
            fragment = fragments.get(selection.name.value)
            condition = fragment.type_condition if fragment is not None else None
        elif isinstance(selection, InlineFragmentNode):
            condition = selection.type_condition
        else:  # a field
            return True
        return condition is None or condition.name.value == type_name

    return SelectionSetNode(selections=tuple(s for s in selection_set.selections if applies(s)))


def _merge_into(
    tree: FieldTree,
    selection_set: SelectionSetNode | None,
    fragments: dict[str, FragmentDefinitionNode],
) -> None:
    if selection_set is None:
        return
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            _merge_into(
                tree.setdefault(selection.name.value, {}), selection.selection_set, fragments
            )
        elif isinstance(selection, FragmentSpreadNode):
            fragment = fragments.get(selection.name.value)
            if fragment is not None:
                _merge_into(tree, fragment.selection_set, fragments)
        elif isinstance(selection, InlineFragmentNode):  # its fields belong to this level
            _merge_into(tree, selection.selection_set, fragments)


def subtree(tree: FieldTree, *path: str) -> FieldTree:
    for name in path:
        tree = tree.get(name, {})
    return tree


def columns_for(
    tree: FieldTree, field_columns: Mapping[str, tuple[str, ...]], always: tuple[str, ...]
) -> tuple[str, ...] | None:
    """The row columns that the selected fields need (in a canonical order, for statement
    caches), or None for all of them when a selected field has no known columns."""
    needed = set(always)
    for name in tree:
        if name == "__typename":
            continue
        columns = field_columns.get(name)
        if columns is None:
            return None
        needed.update(columns)
    return tuple(sorted(needed))
