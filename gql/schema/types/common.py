"""Types shared by every domain: the Relay Node interface, connections, money."""

from collections.abc import Callable, Container
from decimal import Decimal
from typing import Any, Generic, TypeVar

import strawberry

from gql.schema.ids import to_global_id

NodeT = TypeVar("NodeT")
T = TypeVar("T")
_new = object.__new__


def instance(cls: type[T], fields: dict[str, Any]) -> T:
    """An instance of a Strawberry type from values already of the right types, without the
    dataclass `__init__`: its keyword per field is a visible share of completing a list of
    orders (docs/execution.md). Fields left out read the class's defaults."""
    obj = _new(cls)
    obj.__dict__ = fields
    return obj


def node_fields(type_name: str, row: Any) -> dict[str, Any]:
    """A Node's fields from its row, whose columns are named as the fields: the row's items,
    with the global ID as `id` and the row's own id as `row_id`. Only the columns the row
    holds (`Record.get` of an absent one takes an exception path, once per field and row)."""
    fields = dict(row.items())
    row_id = fields["id"]
    fields["row_id"] = row_id
    fields["id"] = to_global_id(type_name, row_id)
    return fields


class _Everything:
    """Contains every name: `wanted` for a caller that does not know the selection."""

    def __contains__(self, _name: object) -> bool:
        return True


ALL_FIELDS = _Everything()


@strawberry.interface(description="An object with a globally unique, opaque ID (Relay).")
class Node:
    id: strawberry.ID


@strawberry.type(description="An exact amount of money: a decimal string and its ISO 4217 code.")
class Money:
    amount: Decimal
    currency: str

    @classmethod
    def of(cls, amount: Decimal | str, currency: str) -> "Money":
        """`amount` as a Decimal, or as the exact decimal text a read gave (see
        `db.compiled.exact_text`): the Decimal scalar writes either as the same string."""
        return instance(cls, {"amount": amount, "currency": currency})


@strawberry.type
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


@strawberry.type
class Edge(Generic[NodeT]):
    cursor: str
    node: NodeT


@strawberry.type
class Connection(Generic[NodeT]):
    edges: list[Edge[NodeT]]
    page_info: PageInfo
    total_count: int = strawberry.field(
        description="How many nodes the whole list has, all pages together (with the same "
        "filters). Counted only when selected: it costs a count of the list."
    )


def connection_of(
    nodes: list[NodeT],
    cursor_of: Callable[[int], str],
    *,
    has_next: bool,
    has_previous: bool,
    wanted: Container[str] = ALL_FIELDS,
    total_count: int | None = None,
) -> Connection[NodeT]:
    """A page of `nodes`; `cursor_of(i)` encodes the cursor of the i-th. `wanted`: the fields
    selected on the edges; without `cursor` among them only the page's ends get one.
    `total_count` is given when `totalCount` is selected: the attribute is left unset
    otherwise, since nothing reads a field that was not selected."""
    every_cursor = "cursor" in wanted
    edges = [
        instance(Edge, {"node": node, "cursor": cursor_of(i) if every_cursor else None})
        for i, node in enumerate(nodes)
    ]
    start_cursor = end_cursor = None
    if edges:
        start_cursor = edges[0].cursor if every_cursor else cursor_of(0)
        end_cursor = edges[-1].cursor if every_cursor else cursor_of(len(edges) - 1)
    fields: dict[str, Any] = {
        "edges": edges,
        "page_info": PageInfo(
            has_next_page=has_next,
            has_previous_page=has_previous,
            start_cursor=start_cursor,
            end_cursor=end_cursor,
        ),
    }
    if total_count is not None:
        fields["total_count"] = total_count
    return instance(Connection, fields)
