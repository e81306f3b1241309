"""Keyset pagination: pages bounded by the last row's sort key, never by OFFSET."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from services.errors import InvalidInput

RowT = TypeVar("RowT")


@dataclass(frozen=True, slots=True)
class Page(Generic[RowT]):
    rows: Sequence[RowT]
    has_next: bool


def check_page_size(first: int | None, *, default: int, maximum: int) -> int:
    """The page size to fetch: `first` if within bounds, else a clear input error."""
    if first is None:
        return default
    if first < 0:
        raise InvalidInput("`first` must not be negative")
    if first > maximum:
        raise InvalidInput(f"`first` must be at most {maximum}")
    return first


def page_from(rows: Sequence[RowT], limit: int) -> Page[RowT]:
    """Rows were fetched with `limit + 1`: the extra row only says that a next page exists."""
    return Page(rows=rows[:limit], has_next=len(rows) > limit)
