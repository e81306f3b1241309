"""Order and OrderItem. Their relations are usually prefetched for a whole list at once
(`prefetch_orders`, below: one batched load per type and level), so resolving them is reading an
attribute; when they were not, the resolver falls back to the request's loaders, still batched."""

from collections.abc import Awaitable, Callable, Container
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import strawberry
from aiodataloader import DataLoader
from orjson import Fragment

from db.json_objects import Member
from db.models import OrderStatus as OrderStatusModel
from gql.engine.selection import FieldTree, columns_for, selection_tree
from gql.schema.context import Context, Info
from gql.schema.ids import row_id_of, to_global_id
from gql.schema.json_levels import planned_json
from gql.schema.loaders import (
    ItemsByOrderIdLoader,
    OrderByIdLoader,
    ProductByIdLoader,
    UserByIdLoader,
)
from gql.schema.types.common import ALL_FIELDS, Money, Node, instance, node_fields
from gql.schema.types.products import PRODUCT_FIELD_COLUMNS, PRODUCT_KEY_COLUMNS, Product
from gql.schema.types.users import User
from services import orders as order_reads

OrderStatus = strawberry.enum(OrderStatusModel, name="OrderStatus")

# The row columns behind each field (see PRODUCT_FIELD_COLUMNS); relations need their keys.
ORDER_FIELD_COLUMNS = {
    "id": ("id",),
    "status": ("status",),
    "total": ("total_amount", "currency"),
    "idempotencyKey": ("idempotency_key",),
    "createdAt": ("created_at",),
    "updatedAt": ("updated_at",),
    "items": ("currency",),
    "user": ("user_id",),
}
ORDER_KEY_COLUMNS = ("id", "user_id", "currency")

T = TypeVar("T")


def _prefetched_or_loaded(
    prefetched: T | Fragment | None,
    info: Info,
    loader_class: type[DataLoader[int, Any]],
    key: int,
    from_row: Callable[[Any], T],
) -> T | Awaitable[T]:
    """A relation's prefetched value or, when it was not prefetched, its row(s) through the
    request's loader (batched with the other objects' loads) made into the type by `from_row`.
    JSON prefetched for a compiled plan (`items_json`) is for that plan only: a resolver
    called means the general path completes this object, and it needs the objects."""
    if prefetched is not None and not isinstance(prefetched, Fragment):
        return prefetched
    return _loaded(info.context.loader(loader_class), key, from_row)


async def _loaded(loader: DataLoader[int, Any], key: int, from_row: Callable[[Any], T]) -> T:
    return from_row(await loader.load(key))


@strawberry.type
class OrderItem:
    id: strawberry.ID
    quantity: int
    unit_price: Money = strawberry.field(description="The price captured when ordering.")
    subtotal: Money
    product_id: strawberry.Private[int]
    prefetched_product: strawberry.Private[Product | None] = None

    @strawberry.field(graphql_type=Product)  # type: ignore[untyped-decorator]
    def product(self, info: Info) -> Product | Awaitable[Product]:
        return _prefetched_or_loaded(
            self.prefetched_product, info, ProductByIdLoader, self.product_id, Product.from_row
        )

    @classmethod
    def from_row(cls, row: Any, currency: str, wanted: Container[str] = ALL_FIELDS) -> "OrderItem":
        """The derived fields (the global id, the subtotal) only when `wanted` selects them:
        nothing reads a field that was not selected, and a page of orders has many items."""
        unit_price = row["unit_price"]
        quantity = row["quantity"]
        fields = {
            "quantity": quantity,
            "unit_price": Money.of(unit_price, currency),
            "product_id": row["product_id"],
        }
        if "id" in wanted:
            fields["id"] = to_global_id("OrderItem", row["id"])
        if "subtotal" in wanted:
            fields["subtotal"] = Money.of(Decimal(unit_price) * quantity, currency)
        return instance(cls, fields)


@strawberry.federation.type(keys=["id"])
class Order(Node):
    id: strawberry.ID
    status: OrderStatus  # type: ignore[valid-type]
    total: Money
    idempotency_key: str | None
    created_at: datetime
    updated_at: datetime
    row_id: strawberry.Private[int]
    user_id: strawberry.Private[int]
    currency: strawberry.Private[str]
    prefetched_items: strawberry.Private[list[OrderItem] | Fragment | None] = None
    prefetched_user: strawberry.Private[User | None] = None

    @strawberry.field(graphql_type=list[OrderItem])  # type: ignore[untyped-decorator]
    def items(self, info: Info) -> list[OrderItem] | Awaitable[list[OrderItem]]:
        return _prefetched_or_loaded(
            self.prefetched_items, info, ItemsByOrderIdLoader, self.row_id, self._items_from_rows
        )

    def _items_from_rows(self, rows: list[Any]) -> list[OrderItem]:
        return [OrderItem.from_row(row, self.currency) for row in rows]

    @strawberry.field(graphql_type=User)  # type: ignore[untyped-decorator]
    def user(self, info: Info) -> User | Awaitable[User]:
        return _prefetched_or_loaded(
            self.prefetched_user, info, UserByIdLoader, self.user_id, User.from_row
        )

    @classmethod
    def from_row(cls, row: Any) -> "Order":
        """From a full row or one with the selected fields' columns (see Product.from_row)."""
        fields = node_fields("Order", row)
        total = fields.pop("total_amount", None)
        fields["total"] = None if total is None else Money.of(total, fields["currency"])
        return instance(cls, fields)

    @classmethod
    async def resolve_reference(cls, info: Info, id: strawberry.ID) -> "Order | None":
        """A federation gateway's reference, authorized like `order(id:)`: anonymous callers
        get UNAUTHENTICATED and other users' orders come back as null (the loader filters by
        the services' readable statement). Relations are prefetched as `order(id:)` does;
        the loaders batch the prefetches of every order of the `_entities` call together."""
        row = await info.context.loader(OrderByIdLoader).load(row_id_of(id, "Order"))
        if row is None:
            return None
        order = cls.from_row(row)
        wanted = selection_tree(info, on_type="Order")
        await prefetch_orders(info.context, [order], wanted, alone=False)
        return order


# Prefetching: a whole level's relations in one batched step per type, so that nested fields of
# a list are plain attributes instead of one awaitable per object (see docs/execution.md).


async def products_by_id(
    context: Context, ids: set[int], wanted: FieldTree, *, alone: bool
) -> dict[int, Product]:
    columns = columns_for(wanted, PRODUCT_FIELD_COLUMNS, PRODUCT_KEY_COLUMNS)
    loader = context.loader(ProductByIdLoader)
    rows = await loader.load_level(sorted(ids), alone=alone, columns=columns)
    return {row["id"]: Product.from_row(row) for row in rows if row is not None}


def items_json(info: Info, path: tuple[str, ...]) -> tuple[Member, ...] | None:
    """The members of the items JSON for the orders at `path` below the field being resolved
    (e.g. `edges`, `node`): see `gql.schema.json_levels`."""
    return planned_json(info, (*path, "items"), order_reads.check_items_json)


async def prefetch_orders(
    context: Context,
    orders: list[Order],
    wanted: FieldTree,
    *,
    alone: bool,
    items_json: tuple[Member, ...] | None = None,
) -> None:
    """Attach the relations that `wanted` selects below each order. `alone`: the orders are
    a whole list field's, no sibling field shares their loads (see `load_level`).
    `items_json`: the items are wanted as JSON with these members (see `items_json`)."""
    if not orders:
        return
    if "items" in wanted and items_json is not None:
        found = await context.read(
            order_reads.items_json_by_order_ids, [order.row_id for order in orders], items_json
        )
        for order in orders:
            order.prefetched_items = Fragment(found[order.row_id])
    elif "items" in wanted:
        item_rows = await context.loader(ItemsByOrderIdLoader).load_level(
            [order.row_id for order in orders], alone=alone
        )
        all_items: list[OrderItem] = []
        wanted_items = wanted["items"]
        for order, rows in zip(orders, item_rows, strict=True):
            items = [OrderItem.from_row(row, order.currency, wanted_items) for row in rows]
            order.prefetched_items = items
            all_items.extend(items)
        if "product" in wanted_items and all_items:
            product_ids = {item.product_id for item in all_items}
            wanted_product = wanted_items["product"]
            products = await products_by_id(context, product_ids, wanted_product, alone=alone)
            for item in all_items:
                item.prefetched_product = products.get(item.product_id)
    if "user" in wanted:
        user_ids = sorted({order.user_id for order in orders})
        rows = await context.loader(UserByIdLoader).load_level(user_ids, alone=alone)
        users = {row["id"]: User.from_row(row) for row in rows if row is not None}
        for order in orders:
            order.prefetched_user = users.get(order.user_id)
