"""Reading the product catalogue: filters, orderings and keyset pages over light rows, whose
price comes as the exact decimal text PostgreSQL gives (`db.compiled.exact_text`)."""

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache

from sqlalchemy import ColumnElement, String, any_, bindparam, select, tuple_
from sqlalchemy.dialects.postgresql import ARRAY

from db.arrays import equals_any_parameter
from db.compiled import (
    CompiledQuery,
    Reader,
    Record,
    columns_named,
    compile_query,
    exact_text,
    fetch,
)
from db.models import Product, ProductKind
from services.errors import InvalidInput
from services.pagination import Page, page_from

PRODUCT_COLUMNS = (
    Product.id,
    Product.sku,
    Product.name,
    Product.description,
    Product.kind,
    exact_text(Product.price),  # read for responses: see db.compiled.exact_text
    Product.currency,
    Product.stock,
    Product.created_at,
    Product.updated_at,
)

MAX_NAME_SEARCH_LENGTH = 100
# Prices are NUMERIC(12,2), and bounds and cursor values are sent as that type: PostgreSQL
# rounds to 2 places, so from 9999999999.995 on a value overflows the column's 10 integer
# digits (and 1e999999999 is finite for Python). Refused here as input errors.
PRICE_OUT_OF_RANGE = Decimal("9999999999.995")


class ProductSort(enum.StrEnum):
    PRICE_ASC = "PRICE_ASC"
    PRICE_DESC = "PRICE_DESC"
    NAME_ASC = "NAME_ASC"
    NEWEST = "NEWEST"


@dataclass(frozen=True, slots=True)
class ProductFilter:
    kinds: tuple[ProductKind, ...] = ()
    min_price: Decimal | None = None
    max_price: Decimal | None = None
    name_contains: str | None = None


_SORT_COLUMN = {
    ProductSort.PRICE_ASC: Product.price,
    ProductSort.PRICE_DESC: Product.price,
    ProductSort.NAME_ASC: Product.name,
    ProductSort.NEWEST: Product.created_at,
}
_DESCENDING = {ProductSort.PRICE_DESC, ProductSort.NEWEST}

SortValue = Decimal | str | datetime


def sort_key(row: Record, sort: ProductSort) -> tuple[str, int]:
    """The position of `row` in `sort`, as strings a cursor can carry."""
    value = row[_SORT_COLUMN[sort].key]
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return text, int(row["id"])


def parse_sort_value(sort: ProductSort, text: str) -> SortValue:
    """The inverse of `sort_key` for the value part; malformed text is an input error."""
    try:
        if sort in (ProductSort.PRICE_ASC, ProductSort.PRICE_DESC):
            price = Decimal(text)
            if not _price_in_range(price):
                raise InvalidOperation
            return price
        if sort is ProductSort.NEWEST:
            return datetime.fromisoformat(text)
    except (InvalidOperation, ValueError) as exc:
        raise InvalidInput("malformed cursor") from exc
    return text


def _filter_conditions(shape: "_SearchShape") -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if shape.kinds:
        conditions.append(Product.kind == any_(bindparam("kinds", type_=ARRAY(String()))))
    if shape.min_price:
        conditions.append(Product.price >= bindparam("min_price"))
    if shape.max_price:
        conditions.append(Product.price <= bindparam("max_price"))
    if shape.name_contains:
        conditions.append(Product.name.ilike(bindparam("name_pattern"), escape="\\"))
    return conditions


@dataclass(frozen=True, slots=True)
class _SearchShape:
    """Which optional parts a search has: one compiled statement per shape."""

    sort: ProductSort
    after: bool
    kinds: bool
    min_price: bool
    max_price: bool
    name_contains: bool
    columns: tuple[str, ...] | None


@lru_cache(maxsize=256)
def _search_query(shape: _SearchShape) -> CompiledQuery:
    column = _SORT_COLUMN[shape.sort]
    descending = shape.sort in _DESCENDING
    selected = columns_named(Product, shape.columns, PRODUCT_COLUMNS)
    statement = select(*selected).where(*_filter_conditions(shape))
    if shape.after:
        position = tuple_(column, Product.id)
        after = tuple_(bindparam("after_value", type_=column.type), bindparam("after_id"))
        statement = statement.where(position < after if descending else position > after)
    if descending:
        statement = statement.order_by(column.desc(), Product.id.desc())
    else:
        statement = statement.order_by(column.asc(), Product.id.asc())
    return compile_query(statement.limit(bindparam("limit")))


@lru_cache(maxsize=128)
def _products_by_ids_query(columns: tuple[str, ...] | None) -> CompiledQuery:
    selected = columns_named(Product, columns, PRODUCT_COLUMNS)
    return compile_query(select(*selected).where(equals_any_parameter(Product.id)))


def _price_in_range(price: Decimal) -> bool:
    # copy_abs: abs() would round to the context and overflow on 1e999999999.
    return price.is_finite() and price.copy_abs() < PRICE_OUT_OF_RANGE


def check_filter(product_filter: ProductFilter) -> None:
    for bound in (product_filter.min_price, product_filter.max_price):
        if bound is not None and (not bound.is_finite() or bound < 0):
            raise InvalidInput("price bounds must be non-negative numbers")
        if bound is not None and not _price_in_range(bound):
            raise InvalidInput("price bounds must be below 10000000000 (prices have 10 digits)")
    if (
        product_filter.min_price is not None
        and product_filter.max_price is not None
        and product_filter.min_price > product_filter.max_price
    ):
        raise InvalidInput("minPrice must not exceed maxPrice")


async def search_products(
    reader: Reader,
    *,
    product_filter: ProductFilter,
    sort: ProductSort,
    after: tuple[SortValue, int] | None,
    limit: int,
    columns: tuple[str, ...] | None = None,
) -> Page[Record]:
    """One page of products matching `product_filter`, in `sort` order, after `after`;
    `columns` narrows the rows as in `products_by_ids` (the cursor's own columns are added)."""
    check_filter(product_filter)
    needle = product_filter.name_contains
    if needle and len(needle) > MAX_NAME_SEARCH_LENGTH:
        raise InvalidInput(f"name search is limited to {MAX_NAME_SEARCH_LENGTH} characters")
    if needle and "\x00" in needle:
        # PostgreSQL text cannot hold NUL: the statement would fail in the database.
        raise InvalidInput("name search must not contain NUL characters")
    shape = _SearchShape(
        sort=sort,
        after=after is not None,
        kinds=bool(product_filter.kinds),
        min_price=product_filter.min_price is not None,
        max_price=product_filter.max_price is not None,
        name_contains=bool(needle),
        columns=(
            None if columns is None else tuple(sorted({*columns, "id", _SORT_COLUMN[sort].key}))
        ),
    )
    escaped = (needle or "").replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    rows = await fetch(
        reader,
        _search_query(shape),
        kinds=[kind.value for kind in product_filter.kinds],
        min_price=product_filter.min_price,
        max_price=product_filter.max_price,
        name_pattern=f"%{escaped}%",
        after_value=after[0] if after else None,
        after_id=after[1] if after else None,
        limit=limit + 1,
    )
    return page_from(rows, limit)


async def products_by_ids(
    reader: Reader, ids: Sequence[int], *, columns: tuple[str, ...] | None = None
) -> dict[int, Record]:
    """Products by id in one statement; missing ids are simply absent. `columns` narrows the
    row to what the caller needs (must include "id"): decoding unused columns, two timestamps
    and a long description among them, costs more than the lookup."""
    rows = await fetch(reader, _products_by_ids_query(columns), keys=list(ids))
    return {row["id"]: row for row in rows}
