"""Keyset pagination both ways: pages bounded by the sort keys of the rows around them, never
by OFFSET. A page is the first `limit` rows of a window (`first`), or its last (`last`)."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from services.errors import InvalidInput

RowT = TypeVar("RowT")
KeyT = TypeVar("KeyT")
OtherKeyT = TypeVar("OtherKeyT")


@dataclass(frozen=True, slots=True)
class Page(Generic[RowT]):
    rows: Sequence[RowT]
    """In the list's order, whichever way the page was read."""
    has_next: bool
    has_previous: bool = False


@dataclass(frozen=True, slots=True)
class Window(Generic[KeyT]):
    """The rows of an ordered list strictly after `after` and before `before` (positions in
    the ordering: its sort keys), of which a page takes the first `limit`, or with `backward`
    the last `limit`."""

    limit: int
    after: KeyT | None = None
    before: KeyT | None = None
    backward: bool = False

    def keyed(self, after: OtherKeyT | None, before: OtherKeyT | None) -> "Window[OtherKeyT]":
        """The same window with other keys (e.g. decoded from cursors)."""
        return Window(self.limit, after, before, self.backward)


def page_window(*, first: int | None, last: int | None, default: int, maximum: int) -> Window[None]:
    """The size and direction of a page: `first` or `last` if within bounds (not both: a
    page is read from one end), else a clear input error. Keys come later (`Window.keyed`)."""
    if first is not None and last is not None:
        raise InvalidInput("send `first` or `last`, not both")
    backward = last is not None
    size = last if backward else first
    if size is None:
        return Window(default)
    name = "last" if backward else "first"
    if size < 0:
        raise InvalidInput(f"`{name}` must not be negative")
    if size > maximum:
        raise InvalidInput(f"`{name}` must be at most {maximum}")
    return Window(size, backward=backward)


def page_from(rows: Sequence[RowT], window: Window[KeyT]) -> Page[RowT]:
    """Rows were fetched with `limit + 1`, from the window's start, or from its end (and so in
    reverse) when `backward`: the extra row only says that more rows lie beyond the page on
    that side. On the other side, a cursor means rows exist past it (the cursor's own row)."""
    more = len(rows) > window.limit
    kept = rows[: window.limit]
    if window.backward:
        return Page(
            rows=kept[::-1],
            has_next=window.before is not None,
            has_previous=more or window.after is not None,
        )
    return Page(
        rows=kept,
        has_next=more or window.before is not None,
        has_previous=window.after is not None,
    )
