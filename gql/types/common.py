"""Types shared by every domain: the Relay Node interface, connections, money."""

from decimal import Decimal
from typing import Any, Generic, TypeVar

import strawberry

NodeT = TypeVar("NodeT")
T = TypeVar("T")
_new = object.__new__


def instance(cls: type[T], fields: dict[str, Any]) -> T:
    """An instance of a Strawberry type from values already of the right types, without the
    dataclass `__init__`: its keyword per field is a visible share of completing a list of
    orders (DESIGN §7). Fields left out read the class's defaults."""
    obj = _new(cls)
    obj.__dict__ = fields
    return obj


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
    def of(cls, amount: Decimal, currency: str) -> "Money":
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


def connection_of(
    nodes_and_cursors: list[tuple[NodeT, str]], *, has_next: bool, has_previous: bool
) -> Connection[NodeT]:
    edges = [Edge(cursor=cursor, node=node) for node, cursor in nodes_and_cursors]
    return Connection(
        edges=edges,
        page_info=PageInfo(
            has_next_page=has_next,
            has_previous_page=has_previous,
            start_cursor=edges[0].cursor if edges else None,
            end_cursor=edges[-1].cursor if edges else None,
        ),
    )
