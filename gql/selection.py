"""What a client selected below a field, as a tree of field names with fragments merged in:
lets a list resolver fetch a whole level's relations at once.

Read from the operation's syntax tree and cached per field node: parsed documents are cached,
so the same query reuses its tree instead of walking (or converting) the selection each time.
A tree is a superset when directives skip fields: it only decides what to prefetch."""

from collections.abc import Iterable, Mapping
from typing import Any

from graphql import FieldNode, FragmentDefinitionNode, FragmentSpreadNode, SelectionSetNode
from strawberry.types.nodes import SelectedField

from gql.context import Info

FieldTree = dict[str, "FieldTree"]

MAX_CACHED_TREES = 4000
_trees: dict[int, tuple[FieldNode, FieldTree]] = {}


def selection_tree(info: Info) -> FieldTree:
    """The fields selected below the field being resolved."""
    raw: Any = info._raw_info
    node: FieldNode = raw.field_nodes[0]
    cached = _trees.get(id(node))
    if cached is not None and cached[0] is node:
        return cached[1]
    tree: FieldTree = {}
    for field_node in raw.field_nodes:
        _merge_into(tree, field_node.selection_set, raw.fragments)
    if len(_trees) >= MAX_CACHED_TREES:
        _trees.clear()
    _trees[id(node)] = (node, tree)
    return tree


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
        else:  # an inline fragment: its fields belong to this level
            _merge_into(tree, selection.selection_set, fragments)


def field_tree(selections: Iterable[Any]) -> FieldTree:
    """The same tree from Strawberry's converted `selected_fields` (off the hot paths)."""
    tree: FieldTree = {}
    for selection in selections:
        if isinstance(selection, SelectedField):
            tree.setdefault(selection.name, {}).update(field_tree(selection.selections))
        else:
            tree.update(field_tree(selection.selections))
    return tree


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
