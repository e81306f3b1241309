"""Load a whole level's relations in one batched step per type, so that nested fields of a list
are plain attributes instead of one awaitable per object (see docs/execution.md)."""

from gql.context import Context
from gql.loaders import ItemsByOrderIdLoader, ProductByIdLoader, UserByIdLoader
from gql.selection import FieldTree, columns_for
from gql.types.orders import Order, OrderItem
from gql.types.products import PRODUCT_FIELD_COLUMNS, PRODUCT_KEY_COLUMNS, Product
from gql.types.users import User


async def products_by_id(
    context: Context, ids: set[int], wanted: FieldTree, *, alone: bool
) -> dict[int, Product]:
    columns = columns_for(wanted, PRODUCT_FIELD_COLUMNS, PRODUCT_KEY_COLUMNS)
    loader = context.loader(ProductByIdLoader)
    rows = await loader.load_level(sorted(ids), alone=alone, columns=columns)
    return {row["id"]: Product.from_row(row) for row in rows if row is not None}


async def prefetch_orders(
    context: Context, orders: list[Order], wanted: FieldTree, *, alone: bool
) -> None:
    """Attach the relations that `wanted` selects below each order. `alone`: the orders are
    a whole list field's, no sibling field shares their loads (see `load_level`)."""
    if not orders:
        return
    if "items" in wanted:
        item_rows = await context.loader(ItemsByOrderIdLoader).load_level(
            [order.row_id for order in orders], alone=alone
        )
        all_items: list[OrderItem] = []
        wanted_items = wanted["items"]
        for order, rows in zip(orders, item_rows, strict=True):
            order.prefetched_items = [
                OrderItem.from_row(row, order.currency, wanted_items) for row in rows
            ]
            all_items.extend(order.prefetched_items)
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
