"""The Query root: arguments in, services called, types out."""

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, Protocol, TypeVar

import strawberry

from db.models import ProductKind as ProductKindModel
from gql.engine.selection import FieldTree, columns_for, selection_tree, subtree
from gql.errors import Unauthenticated
from gql.schema.context import Context, Info
from gql.schema.cursors import decode_cursor, decode_id_cursor, encode_cursor
from gql.schema.ids import from_global_id, row_id_of
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
from services.pagination import Page, RowT, check_page_size

ProductOrder = strawberry.enum(catalog.ProductSort, name="ProductOrder")


@strawberry.input(description="All given conditions must hold.")
class ProductFilter:
    kinds: list[ProductKind] | None = None  # type: ignore[valid-type]
    min_price: Decimal | None = None
    max_price: Decimal | None = None
    name_contains: str | None = strawberry.field(
        default=None, description="Case-insensitive substring of the name."
    )

    def to_service(self) -> catalog.ProductFilter:
        return catalog.ProductFilter(
            kinds=tuple(ProductKindModel(kind) for kind in self.kinds or ()),
            min_price=self.min_price,
            max_price=self.max_price,
            name_contains=self.name_contains,
        )


def _page_size(context: Context, first: int | None) -> int:
    settings = context.settings
    return check_page_size(
        first, default=settings.default_page_size, maximum=settings.max_page_size
    )


class _HasRowId(Protocol):
    @property
    def row_id(self) -> int: ...


OwnNodeT = TypeVar("OwnNodeT", bound=_HasRowId)


async def _own_page(
    context: Context,
    list_own: Callable[..., Awaitable[Page[RowT]]],
    ordering: str,
    first: int | None,
    after: str | None,
    *,
    orm: bool = False,
    **arguments: Any,
) -> Page[RowT]:
    """A page of the viewer's own rows (orders, reservations), newest first: keyset by id,
    after the cursor of `ordering`. `list_own` reads compiled SQL (`Context.read`), or through
    the ORM session (`orm`, `Context.query`)."""
    actor = context.require_viewer()
    limit = _page_size(context, first)
    after_id = decode_id_cursor(after, ordering)
    run = context.query if orm else context.read
    return await run(list_own, actor, after_id=after_id, limit=limit, **arguments)


def _own_connection(
    nodes: list[OwnNodeT], ordering: str, page: Page[Any], after: str | None, edges: FieldTree
) -> Connection[OwnNodeT]:
    """The connection of an `_own_page`: each cursor is the node's id."""
    return connection_of(
        nodes,
        lambda i: encode_cursor(ordering, nodes[i].row_id),
        has_next=page.has_next,
        has_previous=after is not None,
        wanted=edges,
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
        return await _product(info.context, row_id_of(id, "Product"))

    @strawberry.field(description="The catalogue, filtered and ordered, in keyset pages.")  # type: ignore[untyped-decorator]
    async def products(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        filter: ProductFilter | None = None,
        order_by: ProductOrder = catalog.ProductSort.NEWEST,  # type: ignore[valid-type]
    ) -> Connection[Product]:
        sort = catalog.ProductSort(order_by)
        limit = _page_size(info.context, first)
        position = None
        if after is not None:
            text, row_id = decode_cursor(after, f"products:{sort.value}", (str, int))
            position = (catalog.parse_sort_value(sort, str(text)), int(str(row_id)))
        edges = subtree(selection_tree(info), "edges")
        wanted = subtree(edges, "node")
        page = await info.context.read(
            catalog.search_products,
            product_filter=(filter or ProductFilter()).to_service(),
            sort=sort,
            after=position,
            limit=limit,
            columns=columns_for(wanted, PRODUCT_FIELD_COLUMNS, PRODUCT_KEY_COLUMNS),
        )
        rows = page.rows
        ordering = f"products:{sort.value}"
        return connection_of(
            [Product.from_row(row) for row in rows],
            lambda i: encode_cursor(ordering, *catalog.sort_key(rows[i], sort)),
            has_next=page.has_next,
            has_previous=after is not None,
            wanted=edges,
        )

    @strawberry.field(description="One order: only its owner (or an admin) can see it.")  # type: ignore[untyped-decorator]
    async def order(self, info: Info, id: strawberry.ID) -> Order | None:
        info.context.require_viewer()
        return await _order(info.context, row_id_of(id, "Order"), selection_tree(info))

    @strawberry.field(description="The viewer's orders, newest first.")  # type: ignore[untyped-decorator]
    async def orders(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        status: OrderStatus | None = None,  # type: ignore[valid-type]
    ) -> Connection[Order]:
        edges = subtree(selection_tree(info), "edges")
        wanted = subtree(edges, "node")
        page = await _own_page(
            info.context,
            orders.list_orders,
            "orders",
            first,
            after,
            columns=columns_for(wanted, ORDER_FIELD_COLUMNS, ORDER_KEY_COLUMNS),
            status=status,
        )
        nodes = [Order.from_row(row) for row in page.rows]
        await prefetch_orders(info.context, nodes, wanted, alone=True)
        return _own_connection(nodes, "orders", page, after, edges)

    @strawberry.field(description="The viewer's reservations (holds), newest first.")  # type: ignore[untyped-decorator]
    async def reservations(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        status: ReservationStatus | None = None,  # type: ignore[valid-type]
    ) -> Connection[Reservation]:
        page = await _own_page(
            info.context,
            reservations.list_reservations,
            "reservations",
            first,
            after,
            orm=True,
            status=status,
        )
        nodes = [Reservation.from_row(row) for row in page.rows]
        edges = subtree(selection_tree(info), "edges")
        return _own_connection(nodes, "reservations", page, after, edges)
