"""What a client selected below a field, as a tree of field names with fragments merged in:
lets a list resolver fetch a whole level's relations at once.

Read from the operation's syntax tree and cached per field node: parsed documents are cached,
so the same query reuses its tree instead of walking (or converting) the selection each time.
A tree is a superset when directives skip fields: it only decides what to prefetch."""

from collections.abc import Mapping

from graphql import FieldNode, SelectionSetNode

from core.bounded import BoundedCache
from gql.engine.internals import raw_info
from gql.engine.walk import NO_FRAGMENTS, Fragments, type_condition, walk
from gql.schema.context import Info

FieldTree = dict[str, "FieldTree"]

MAX_CACHED_TREES = 4000
# (id of the first field node, on_type) -> (that node, kept alive so its id stays unique; tree)
_trees: BoundedCache[tuple[int, str | None], tuple[FieldNode, FieldTree]]
_trees = BoundedCache(MAX_CACHED_TREES)


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
        _merge_into(tree, selection_set, raw.fragments, NO_FRAGMENTS)
    _trees.put(key, (node, tree))
    return tree


def _only_on(
    selection_set: SelectionSetNode, type_name: str, fragments: Fragments
) -> SelectionSetNode:
    """The selections of this level that apply to `type_name`: fields, and fragments without a
    type condition or on that type (fragments nested in those are kept whatever their type)."""
    return SelectionSetNode(
        selections=tuple(
            selection
            for selection in selection_set.selections
            if type_condition(selection, fragments) in (None, type_name)
        )
    )


def _merge_into(
    tree: FieldTree,
    selection_set: SelectionSetNode | None,
    fragments: Fragments,
    expanding: frozenset[str],
) -> None:
    """The fields of this level (fragments and inline fragments expanded: their fields belong
    to it) into `tree`, and below each field, its own level."""
    if selection_set is None:
        return
    for reached in walk(selection_set, fragments, expanding=expanding):
        selection = reached.node
        if isinstance(selection, FieldNode):
            _merge_into(
                tree.setdefault(selection.name.value, {}),
                selection.selection_set,
                fragments,
                reached.expanding,
            )


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
