"""The Query root: arguments in, services called, types out."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol, TypeVar

import strawberry

from db.models import ProductKind as ProductKindModel
from gql.engine.selection import FieldTree, columns_for, selection_tree, subtree
from gql.errors import Unauthenticated
from gql.schema.context import Context, Info
from gql.schema.cursors import decode_cursor, decode_id_cursor, encode_cursor
from gql.schema.ids import from_global_id, row_id_of
from gql.schema.json_levels import json_nodes, planned_json
from gql.schema.loaders import (
    OrderByIdLoader,
    ProductByIdLoader,
    ReservationByIdLoader,
    UserByIdLoader,
)
from gql.schema.types.common import Connection, Node, connection_of
from gql.schema.types.orders import (
    ORDER_FIELD_COLUMNS,
    ORDER_KEY_COLUMNS,
    Order,
    OrderStatus,
    items_json,
    prefetch_orders,
)
from gql.schema.types.products import (
    PRODUCT_FIELD_COLUMNS,
    PRODUCT_KEY_COLUMNS,
    Product,
    ProductKind,
)
from gql.schema.types.reservations import Reservation, ReservationStatus
from gql.schema.types.users import User
from services import catalog, orders, reservations
from services.errors import InvalidInput
from services.pagination import Page, RowT, Window, page_window

ProductOrder = strawberry.enum(
    catalog.ProductSort,
    name="ProductOrder",
    description="PRICE_ASC and PRICE_DESC order by currency first (alphabetically, reversed "
    "for PRICE_DESC), then by amount within each currency: amounts in different currencies "
    "are never compared. Filter on `currency` for one currency's prices in order.",
)


PRODUCTS_DESCRIPTION = (
    "The catalogue, filtered and ordered, in keyset pages: `first`/`after` forward, "
    "`last`/`before` backward (the same cursors)."
)
ORDERS_DESCRIPTION = "The viewer's orders, newest first (`last`/`before` page back)."
RESERVATIONS_DESCRIPTION = (
    "The viewer's reservations (holds), newest first (`last`/`before` page back)."
)


@strawberry.input(
    description="All given conditions must hold. Amounts are compared only within one "
    "currency: `minPrice` and `maxPrice` need `currency`."
)
class ProductFilter:
    kinds: list[ProductKind] | None = None  # type: ignore[valid-type]
    currency: str | None = strawberry.field(
        default=None, description="Only products priced in this ISO 4217 currency (e.g. EUR)."
    )
    min_price: Decimal | None = strawberry.field(
        default=None, description="Lowest price, in `currency` (required with it)."
    )
    max_price: Decimal | None = strawberry.field(
        default=None, description="Highest price, in `currency` (required with it)."
    )
    name_contains: str | None = strawberry.field(
        default=None, description="Case-insensitive substring of the name."
    )

    def to_service(self) -> catalog.ProductFilter:
        return catalog.ProductFilter(
            kinds=tuple(ProductKindModel(kind) for kind in self.kinds or ()),
            currency=self.currency,
            min_price=self.min_price,
            max_price=self.max_price,
            name_contains=self.name_contains,
        )


def _window(context: Context, first: int | None, last: int | None) -> Window[None]:
    """The size and direction of a page (its keys come from the cursors)."""
    settings = context.settings
    return page_window(
        first=first,
        last=last,
        default=settings.default_page_size,
        maximum=settings.max_page_size,
    )


def _counted(tree: FieldTree) -> bool:
    """Whether the connection's `totalCount` is selected: only then is it counted."""
    return "totalCount" in tree


async def _total(
    tree: FieldTree, page: Page[Any], count: Callable[[], Awaitable[int]]
) -> int | None:
    """`totalCount` when selected: one count, or none when the page is the whole list (no
    cursor, nothing beyond it either way), whose length is then the count."""
    if not _counted(tree):
        return None
    if not page.has_next and not page.has_previous:
        return len(page.rows)
    return await count()


def _position(
    cursor: str | None, ordering: str, sort: catalog.ProductSort
) -> catalog.Position | None:
    """The position in the catalogue a cursor of `ordering` names (None for no cursor)."""
    if cursor is None:
        return None
    key = decode_cursor(cursor, ordering, catalog.key_types(sort))
    return catalog.parse_sort_key(sort, key)


class _HasRowId(Protocol):
    @property
    def row_id(self) -> int: ...


OwnNodeT = TypeVar("OwnNodeT", bound=_HasRowId)


@dataclass(frozen=True, slots=True)
class Paging:
    """A connection's paging arguments, as the client sent them."""

    first: int | None
    after: str | None
    last: int | None
    before: str | None


async def _own_page(
    context: Context,
    list_own: Callable[..., Awaitable[Page[RowT]]],
    ordering: str,
    paging: Paging,
    *,
    orm: bool = False,
    **arguments: Any,
) -> Page[RowT]:
    """A page of the viewer's own rows (orders, reservations), newest first: keyset by id,
    between the cursors of `ordering`. `list_own` reads compiled SQL (`Context.read`), or
    through the ORM session (`orm`, `Context.query`)."""
    actor = context.require_viewer()
    window = _window(context, paging.first, paging.last).keyed(
        decode_id_cursor(paging.after, ordering), decode_id_cursor(paging.before, ordering)
    )
    run = context.query if orm else context.read
    return await run(list_own, actor, window=window, **arguments)


def _own_connection(
    nodes: list[OwnNodeT],
    row_ids: list[int],
    ordering: str,
    page: Page[Any],
    *,
    edges: FieldTree,
    total_count: int | None,
) -> Connection[OwnNodeT]:
    """The connection of an `_own_page`: each cursor is its node's row id."""
    return connection_of(
        nodes,
        lambda i: encode_cursor(ordering, row_ids[i]),
        has_next=page.has_next,
        has_previous=page.has_previous,
        wanted=edges,
        total_count=total_count,
    )


async def _order(context: Context, row_id: int, wanted: FieldTree) -> Order | None:
    row = await context.loader(OrderByIdLoader).load(row_id)
    if row is None:
        return None
    order = Order.from_row(row)
    await prefetch_orders(context, [order], wanted, alone=False)
    return order


async def _product(context: Context, row_id: int) -> Product | None:
    row = await context.loader(ProductByIdLoader).load(row_id)
    return None if row is None else Product.from_row(row)


async def product_by_global_id(context: Context, id: str) -> Product | None:
    return await _product(context, row_id_of(id, "Product"))


async def product_point_read(context: Context, id: str) -> Product | None:
    """`product(id:)` as the point read's load (`POINT_READS`): the field is the operation's
    only one, so there is nothing to batch with."""
    row = await context.loader(ProductByIdLoader).load_alone(row_id_of(id, "Product"))
    return None if row is None else Product.from_row(row)


async def _user(context: Context, row_id: int) -> User | None:
    row = await context.loader(UserByIdLoader).load(row_id)
    return None if row is None else User.from_row(row)


@strawberry.type
class Query:
    @strawberry.field(description="Any object by its global ID (Relay).")  # type: ignore[untyped-decorator]
    async def node(self, info: Info, id: strawberry.ID) -> Node | None:
        type_name, row_id = from_global_id(id)
        context = info.context
        if type_name == "Product":
            return await _product(context, row_id)
        if type_name == "Order":
            context.require_viewer()
            return await _order(context, row_id, selection_tree(info))
        if type_name == "User":
            context.require_viewer()
            return await _user(context, row_id)
        if type_name == "Reservation":
            context.require_viewer()
            row = await context.loader(ReservationByIdLoader).load(row_id)
            return None if row is None else Reservation.from_row(row)
        raise InvalidInput(f"ID {id!r} does not name a fetchable object")

    @strawberry.field(description="The authenticated user; null when anonymous.")  # type: ignore[untyped-decorator]
    async def me(self, info: Info) -> User | None:
        context = info.context
        if context.auth_error:
            raise Unauthenticated(context.auth_error)
        if context.viewer is None:
            return None
        return await _user(context, context.viewer.user_id)

    @strawberry.field
    async def product(self, info: Info, id: strawberry.ID) -> Product | None:
        return await product_by_global_id(info.context, id)

    @strawberry.field(description=PRODUCTS_DESCRIPTION)  # type: ignore[untyped-decorator]
    async def products(
        self,
        info: Info,
        *,
        first: int | None = None,
        after: str | None = None,
        filter: ProductFilter | None = None,
        order_by: ProductOrder = catalog.ProductSort.NEWEST,  # type: ignore[valid-type]
        last: int | None = None,
        before: str | None = None,
    ) -> Connection[Product]:
        context = info.context
        sort = catalog.ProductSort(order_by)
        ordering = f"products:{sort.value}"
        window = _window(context, first, last).keyed(
            _position(after, ordering, sort), _position(before, ordering, sort)
        )
        tree = selection_tree(info)
        edges = subtree(tree, "edges")
        wanted = subtree(edges, "node")
        product_filter = (filter or ProductFilter()).to_service()
        # Warm, the nodes come as the JSON the plan takes (gql/schema/json_levels.py).
        json = planned_json(info, ("edges", "node"), catalog.check_product_json)
        page = await context.read(
            catalog.search_products,
            product_filter=product_filter,
            sort=sort,
            window=window,
            columns=columns_for(wanted, PRODUCT_FIELD_COLUMNS, PRODUCT_KEY_COLUMNS),
            json=json,
        )
        total = await _total(
            tree, page, lambda: context.read(catalog.count_products, product_filter=product_filter)
        )
        rows = page.rows
        nodes: list[Any] = (
            [Product.from_row(row) for row in rows] if json is None else json_nodes(rows)
        )
        return connection_of(
            nodes,
            lambda i: encode_cursor(ordering, *catalog.sort_key(rows[i], sort)),
            has_next=page.has_next,
            has_previous=page.has_previous,
            wanted=edges,
            total_count=total,
        )

    @strawberry.field(description="One order: only its owner (or an admin) can see it.")  # type: ignore[untyped-decorator]
    async def order(self, info: Info, id: strawberry.ID) -> Order | None:
        info.context.require_viewer()
        return await _order(info.context, row_id_of(id, "Order"), selection_tree(info))

    @strawberry.field(description=ORDERS_DESCRIPTION)  # type: ignore[untyped-decorator]
    async def orders(
        self,
        info: Info,
        *,
        first: int | None = None,
        after: str | None = None,
        status: OrderStatus | None = None,  # type: ignore[valid-type]
        last: int | None = None,
        before: str | None = None,
    ) -> Connection[Order]:
        context = info.context
        tree = selection_tree(info)
        edges = subtree(tree, "edges")
        wanted = subtree(edges, "node")
        # Warm, the nodes come as the JSON the plan takes (gql/schema/json_levels.py), their
        # items in it; else, maybe their items only (a selection PostgreSQL cannot render).
        json = planned_json(info, ("edges", "node"), orders.check_order_json)
        page = await _own_page(
            context,
            orders.list_orders,
            "orders",
            Paging(first, after, last, before),
            columns=columns_for(wanted, ORDER_FIELD_COLUMNS, ORDER_KEY_COLUMNS),
            status=status,
            json=json,
        )
        nodes: list[Any]
        if json is not None:
            nodes = json_nodes(page.rows)
        else:
            nodes = [Order.from_row(row) for row in page.rows]
            items = items_json(info, ("edges", "node"))
            await prefetch_orders(context, nodes, wanted, alone=True, items_json=items)
        total = await _total(
            tree,
            page,
            lambda: context.read(orders.count_orders, context.require_viewer(), status=status),
        )
        row_ids = [row["id"] for row in page.rows]
        return _own_connection(nodes, row_ids, "orders", page, edges=edges, total_count=total)

    @strawberry.field(description=RESERVATIONS_DESCRIPTION)  # type: ignore[untyped-decorator]
    async def reservations(
        self,
        info: Info,
        *,
        first: int | None = None,
        after: str | None = None,
        status: ReservationStatus | None = None,  # type: ignore[valid-type]
        last: int | None = None,
        before: str | None = None,
    ) -> Connection[Reservation]:
        context = info.context
        page = await _own_page(
            context,
            reservations.list_reservations,
            "reservations",
            Paging(first, after, last, before),
            orm=True,
            status=status,
        )
        nodes = [Reservation.from_row(row) for row in page.rows]
        tree = selection_tree(info)
        total = await _total(
            tree,
            page,
            lambda: context.query(
                reservations.count_reservations, context.require_viewer(), status=status
            ),
        )
        row_ids = [node.row_id for node in nodes]
        return _own_connection(
            nodes, row_ids, "reservations", page, edges=subtree(tree, "edges"), total_count=total
        )


# Root fields that read one object by its ID, with their loads: the compiled executor answers
# an operation made of one of them alone without graphql-core's `execute`
# (gql/engine/point_reads.py).
POINT_READS = {"product": product_point_read}
