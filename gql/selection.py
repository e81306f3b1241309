"""What a client selected below a field, as a tree of field names with fragments merged in:
lets a list resolver fetch a whole level's relations at once."""

from collections.abc import Iterable
from typing import Any

from strawberry.types.nodes import SelectedField

FieldTree = dict[str, "FieldTree"]


def field_tree(selections: Iterable[Any]) -> FieldTree:
    tree: FieldTree = {}
    _merge_into(tree, selections)
    return tree


def _merge_into(tree: FieldTree, selections: Iterable[Any]) -> None:
    for selection in selections:
        if isinstance(selection, SelectedField):
            _merge_into(tree.setdefault(selection.name, {}), selection.selections)
        else:
            # Inline fragments and fragment spreads: their fields belong to this level.
            _merge_into(tree, selection.selections)


def subtree(tree: FieldTree, *path: str) -> FieldTree:
    for name in path:
        tree = tree.get(name, {})
    return tree
