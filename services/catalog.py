"""Reading the product catalogue: filters, orderings and keyset pages over light rows."""

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation

from sqlalchemy import ColumnElement, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from db.arrays import equals_any
from db.models import Product, ProductKind
from db.rows import LightRow
from services.errors import InvalidInput
from services.pagination import Page, page_from

PRODUCT_COLUMNS = (
    Product.id,
    Product.sku,
    Product.name,
    Product.description,
    Product.kind,
    Product.price,
    Product.currency,
    Product.stock,
    Product.created_at,
    Product.updated_at,
)

MAX_NAME_SEARCH_LENGTH = 100


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


def sort_key(row: LightRow, sort: ProductSort) -> tuple[str, int]:
    """The position of `row` in `sort`, as strings a cursor can carry."""
    value = getattr(row, _SORT_COLUMN[sort].key)
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return text, int(row.id)


def parse_sort_value(sort: ProductSort, text: str) -> SortValue:
    """The inverse of `sort_key` for the value part; malformed text is an input error."""
    try:
        if sort in (ProductSort.PRICE_ASC, ProductSort.PRICE_DESC):
            price = Decimal(text)
            if not price.is_finite():
                raise InvalidOperation
            return price
        if sort is ProductSort.NEWEST:
            return datetime.fromisoformat(text)
    except (InvalidOperation, ValueError) as exc:
        raise InvalidInput("malformed cursor") from exc
    return text


def _filter_conditions(product_filter: ProductFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if product_filter.kinds:
        conditions.append(Product.kind.in_(product_filter.kinds))
    if product_filter.min_price is not None:
        conditions.append(Product.price >= product_filter.min_price)
    if product_filter.max_price is not None:
        conditions.append(Product.price <= product_filter.max_price)
    if product_filter.name_contains:
        needle = product_filter.name_contains
        if len(needle) > MAX_NAME_SEARCH_LENGTH:
            raise InvalidInput(f"name search is limited to {MAX_NAME_SEARCH_LENGTH} characters")
        escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(Product.name.ilike(f"%{escaped}%", escape="\\"))
    return conditions


def check_filter(product_filter: ProductFilter) -> None:
    for bound in (product_filter.min_price, product_filter.max_price):
        if bound is not None and (not bound.is_finite() or bound < 0):
            raise InvalidInput("price bounds must be non-negative numbers")
    if (
        product_filter.min_price is not None
        and product_filter.max_price is not None
        and product_filter.min_price > product_filter.max_price
    ):
        raise InvalidInput("minPrice must not exceed maxPrice")


async def search_products(
    session: AsyncSession,
    *,
    product_filter: ProductFilter,
    sort: ProductSort,
    after: tuple[SortValue, int] | None,
    limit: int,
) -> Page[LightRow]:
    """One page of products matching `product_filter`, in `sort` order, after `after`."""
    check_filter(product_filter)
    column = _SORT_COLUMN[sort]
    descending = sort in _DESCENDING
    statement = select(*PRODUCT_COLUMNS).where(*_filter_conditions(product_filter))
    if after is not None:
        position = tuple_(column, Product.id)
        statement = statement.where(position < after if descending else position > after)
    if descending:
        statement = statement.order_by(column.desc(), Product.id.desc())
    else:
        statement = statement.order_by(column.asc(), Product.id.asc())
    rows = (await session.execute(statement.limit(limit + 1))).all()
    return page_from(rows, limit)


async def products_by_ids(session: AsyncSession, ids: Sequence[int]) -> dict[int, LightRow]:
    """Products by id in one statement; missing ids are simply absent."""
    rows = await session.execute(select(*PRODUCT_COLUMNS).where(equals_any(Product.id, ids)))
    return {row.id: row for row in rows}
