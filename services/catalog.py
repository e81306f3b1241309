"""Reading the product catalogue: filters, orderings and keyset pages over light rows, whose
price comes as the exact decimal text PostgreSQL gives (`db.compiled.exact_text`)."""

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, String, any_, bindparam, func, select, tuple_
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import InstrumentedAttribute

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
from db.json_objects import Member, Render, json_column, json_object, money, value
from db.models import Product, ProductKind
from services.errors import InvalidInput
from services.global_ids import global_id_sql
from services.pagination import Page, Window, page_from

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

# What PostgreSQL can render of a product as JSON (db.json_objects), by attribute; kinds are
# written as their names, which are their stored values.
PRODUCT_JSON: dict[str, Render] = {
    "id": value(global_id_sql("Product", Product.id)),
    "sku": value(Product.sku),
    "name": value(Product.name),
    "description": value(Product.description),
    "kind": value(Product.kind),
    "price": money(Product.price, Product.currency),
    "stock": value(Product.stock),
}

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
    currency: str | None = None
    min_price: Decimal | None = None
    max_price: Decimal | None = None
    name_contains: str | None = None


# The columns of each ordering, then the id (so every position is unique). Amounts compare
# only within a currency: price orderings group by currency first (alphabetically, reversed
# for PRICE_DESC), and a price range needs a currency (`check_filter`).
_SORT_COLUMNS: dict[ProductSort, tuple[InstrumentedAttribute[Any], ...]] = {
    ProductSort.PRICE_ASC: (Product.currency, Product.price),
    ProductSort.PRICE_DESC: (Product.currency, Product.price),
    ProductSort.NAME_ASC: (Product.name,),
    ProductSort.NEWEST: (Product.created_at,),
}
_DESCENDING = {ProductSort.PRICE_DESC, ProductSort.NEWEST}
_PRICE_SORTS = {ProductSort.PRICE_ASC, ProductSort.PRICE_DESC}
_CURRENCY = re.compile(r"^[A-Z]{3}$")

SortValue = Decimal | str | datetime
Position = tuple[SortValue | int, ...]
"""A row's place in an ordering: its values of the ordering's columns, then its id."""


_SORT_NAMES = {
    sort: tuple(column.key for column in columns) for sort, columns in _SORT_COLUMNS.items()
}


def sort_columns(sort: ProductSort) -> tuple[str, ...]:
    """The names of the columns a position in `sort` is made of (without the id)."""
    return _SORT_NAMES[sort]


def sort_key(row: Record, sort: ProductSort) -> tuple[str | int, ...]:
    """The position of `row` in `sort`, as strings (and the id) a cursor can carry."""
    key: list[str | int] = []
    for name in _SORT_NAMES[sort]:
        value = row[name]
        key.append(value.isoformat() if isinstance(value, datetime) else str(value))
    key.append(int(row["id"]))
    return tuple(key)


def key_types(sort: ProductSort) -> tuple[type, ...]:
    """The types of the parts of `sort_key`: a cursor's, checked when it is decoded."""
    return (*(str for _ in _SORT_COLUMNS[sort]), int)


def parse_sort_key(sort: ProductSort, key: Sequence[object]) -> Position:
    """The inverse of `sort_key`; malformed values are an input error."""
    *texts, row_id = key
    values: list[SortValue | int] = []
    try:
        for name, text in zip(sort_columns(sort), texts, strict=True):
            if name == "price":
                price = Decimal(str(text))
                if not _price_in_range(price):
                    raise InvalidOperation
                values.append(price)
            elif name == "created_at":
                values.append(datetime.fromisoformat(str(text)))
            else:
                values.append(str(text))
    except (InvalidOperation, ValueError) as exc:
        raise InvalidInput("malformed cursor") from exc
    return (*values, int(str(row_id)))


def _filter_conditions(shape: "_SearchShape") -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if shape.kinds:
        conditions.append(Product.kind == any_(bindparam("kinds", type_=ARRAY(String()))))
    if shape.currency:
        conditions.append(Product.currency == bindparam("currency"))
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
    before: bool
    backward: bool
    kinds: bool
    currency: bool
    min_price: bool
    max_price: bool
    name_contains: bool
    columns: tuple[str, ...] | None
    json: tuple[Member, ...] | None = None  # the products as JSON too (`PRODUCT_JSON`)


def _position_bound(sort: ProductSort, name: str) -> Any:
    columns = _SORT_COLUMNS[sort]
    return tuple_(
        *(bindparam(f"{name}_{i}", type_=column.type) for i, column in enumerate(columns)),
        bindparam(f"{name}_id"),
    )


@lru_cache(maxsize=512)
def _search_query(shape: _SearchShape) -> CompiledQuery:
    columns = _SORT_COLUMNS[shape.sort]
    descending = shape.sort in _DESCENDING
    selected = list(columns_named(Product, shape.columns, PRODUCT_COLUMNS))
    if shape.json is not None:
        selected.append(json_column(shape.json, PRODUCT_JSON))
    statement = select(*selected).where(*_filter_conditions(shape))
    position = tuple_(*columns, Product.id)
    if shape.after:
        after = _position_bound(shape.sort, "after")
        statement = statement.where(position < after if descending else position > after)
    if shape.before:
        before = _position_bound(shape.sort, "before")
        statement = statement.where(position > before if descending else position < before)
    # A backward page is read from the window's end, in reverse; the service turns it round.
    reverse = descending != shape.backward
    keys = (*columns, Product.id)
    statement = statement.order_by(*(key.desc() if reverse else key.asc() for key in keys))
    return compile_query(statement.limit(bindparam("limit")))


@lru_cache(maxsize=128)
def _products_by_ids_query(columns: tuple[str, ...] | None) -> CompiledQuery:
    selected = columns_named(Product, columns, PRODUCT_COLUMNS)
    return compile_query(select(*selected).where(equals_any_parameter(Product.id)))


_product_by_id_query = compile_query(select(*PRODUCT_COLUMNS).where(Product.id == bindparam("id")))


def _price_in_range(price: Decimal) -> bool:
    # copy_abs: abs() would round to the context and overflow on 1e999999999.
    return price.is_finite() and price.copy_abs() < PRICE_OUT_OF_RANGE


def check_filter(product_filter: ProductFilter) -> None:
    needle = product_filter.name_contains
    if needle and len(needle) > MAX_NAME_SEARCH_LENGTH:
        raise InvalidInput(f"name search is limited to {MAX_NAME_SEARCH_LENGTH} characters")
    if needle and "\x00" in needle:
        # PostgreSQL text cannot hold NUL: the statement would fail in the database.
        raise InvalidInput("name search must not contain NUL characters")
    currency = product_filter.currency
    if currency is not None and not _CURRENCY.match(currency):
        raise InvalidInput("currency must be an ISO 4217 code of 3 capital letters")
    ranged = product_filter.min_price is not None or product_filter.max_price is not None
    if ranged and currency is None:
        raise InvalidInput(
            "minPrice and maxPrice compare amounts of one currency: give `currency` too"
        )
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
    window: Window[Position],
    columns: tuple[str, ...] | None = None,
    json: tuple[Member, ...] | None = None,
) -> Page[Record]:
    """One page of products matching `product_filter`, in `sort` order, within `window`;
    `columns` narrows the rows as in `products_by_ids` (the cursor's own columns are added).
    With `json`, each row also has the product as a JSON object of these members (text, in
    column `json`; see `check_product_json`)."""
    check_filter(product_filter)
    if json is not None:
        columns = ()
    after, before = window.after, window.before
    shape = _SearchShape(
        sort=sort,
        after=after is not None,
        before=before is not None,
        backward=window.backward,
        kinds=bool(product_filter.kinds),
        currency=product_filter.currency is not None,
        min_price=product_filter.min_price is not None,
        max_price=product_filter.max_price is not None,
        name_contains=bool(product_filter.name_contains),
        columns=(None if columns is None else tuple(sorted({*columns, "id", *sort_columns(sort)}))),
        json=json,
    )
    rows = await fetch(
        reader,
        _search_query(shape),
        **_filter_values(product_filter),
        **_position_values("after", after),
        **_position_values("before", before),
        limit=window.limit + 1,
    )
    return page_from(rows, window)


def check_product_json(members: tuple[Member, ...]) -> None:
    """Raise `Unrenderable` unless a product can be rendered with these members."""
    json_object(members, PRODUCT_JSON)


async def count_products(reader: Reader, *, product_filter: ProductFilter) -> int:
    """How many products match `product_filter`: a connection's `totalCount`."""
    check_filter(product_filter)
    shape = _SearchShape(
        sort=ProductSort.NEWEST,
        after=False,
        before=False,
        backward=False,
        kinds=bool(product_filter.kinds),
        currency=product_filter.currency is not None,
        min_price=product_filter.min_price is not None,
        max_price=product_filter.max_price is not None,
        name_contains=bool(product_filter.name_contains),
        columns=None,
    )
    (row,) = await fetch(reader, _count_query(shape), **_filter_values(product_filter))
    return int(row["count"])


@lru_cache(maxsize=64)
def _count_query(shape: _SearchShape) -> CompiledQuery:
    statement = select(func.count().label("count")).select_from(Product)
    return compile_query(statement.where(*_filter_conditions(shape)))


def _filter_values(product_filter: ProductFilter) -> dict[str, Any]:
    needle = product_filter.name_contains or ""
    escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return {
        "kinds": [kind.value for kind in product_filter.kinds],
        "currency": product_filter.currency,
        "min_price": product_filter.min_price,
        "max_price": product_filter.max_price,
        "name_pattern": f"%{escaped}%",
    }


def _position_values(name: str, position: Position | None) -> dict[str, Any]:
    if position is None:
        return {}
    *values, row_id = position
    return {**{f"{name}_{i}": value for i, value in enumerate(values)}, f"{name}_id": row_id}


async def products_by_ids(
    reader: Reader, ids: Sequence[int], *, columns: tuple[str, ...] | None = None
) -> dict[int, Record]:
    """Products by id in one statement; missing ids are simply absent. `columns` narrows the
    row to what the caller needs (must include "id"): decoding unused columns, two timestamps
    and a long description among them, costs more than the lookup."""
    rows = await fetch(reader, _products_by_ids_query(columns), keys=list(ids))
    return {row["id"]: row for row in rows}


async def product_by_id(reader: Reader, product_id: int) -> Record | None:
    """One product, when it is the only one to read: `id = $1` spares the driver the array
    `products_by_ids` sends (measured: 1% of a point read's instructions)."""
    rows = await fetch(reader, _product_by_id_query, id=product_id)
    return rows[0] if rows else None
