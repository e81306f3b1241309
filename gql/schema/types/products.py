"""The Product type: bookable inventory."""

from datetime import datetime
from typing import Any

import strawberry

from db.models import ProductKind as ProductKindModel
from gql.schema.context import Info
from gql.schema.ids import row_id_of
from gql.schema.loaders import ProductByIdLoader
from gql.schema.types.common import Money, Node, instance, node_fields

ProductKind = strawberry.enum(ProductKindModel, name="ProductKind")

# The row columns behind each field, so that a list can fetch only what was selected.
PRODUCT_FIELD_COLUMNS = {
    "id": ("id",),
    "sku": ("sku",),
    "name": ("name",),
    "description": ("description",),
    "kind": ("kind",),
    "price": ("price", "currency"),
    "stock": ("stock",),
    "createdAt": ("created_at",),
    "updatedAt": ("updated_at",),
}
PRODUCT_KEY_COLUMNS = ("id",)


@strawberry.federation.type(
    keys=["id"], description="A bookable thing: a hotel room, a flight seat, a tour..."
)
class Product(Node):
    id: strawberry.ID
    sku: str
    name: str
    description: str
    kind: ProductKind  # type: ignore[valid-type]
    price: Money
    stock: int = strawberry.field(description="Units available now (holds already deducted).")
    created_at: datetime
    updated_at: datetime
    row_id: strawberry.Private[int]

    @classmethod
    def from_row(cls, row: Any) -> "Product":
        """From a full row, or from one with only the selected fields' columns (the others are
        left unset: nothing reads a field that was not selected)."""
        fields = node_fields("Product", row)
        price = fields.get("price")
        currency = fields.pop("currency", None)
        # A price read only to order a page comes without its currency: no Money then.
        fields["price"] = None if price is None or currency is None else Money.of(price, currency)
        return instance(cls, fields)

    @classmethod
    async def resolve_reference(cls, info: Info, id: strawberry.ID) -> "Product | None":
        """A federation gateway's reference, through the request's loader (batched)."""
        row = await info.context.loader(ProductByIdLoader).load(row_id_of(id, "Product"))
        return None if row is None else cls.from_row(row)
