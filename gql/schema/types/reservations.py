"""The Reservation type: a hold on stock with a deadline."""

from datetime import UTC, datetime
from typing import Any

import strawberry

from db.models import ReservationStatus as ReservationStatusModel
from gql.schema.context import Info
from gql.schema.ids import to_global_id
from gql.schema.loaders import ProductByIdLoader
from gql.schema.types.common import Node
from gql.schema.types.products import Product
from services.reservations import effective_status

ReservationStatus = strawberry.enum(ReservationStatusModel, name="ReservationStatus")


@strawberry.type(
    description="Units of a product held for the viewer until `expiresAt`: the stock is taken "
    "while HELD and comes back when the hold is released or expires."
)
class Reservation(Node):
    id: strawberry.ID
    quantity: int
    status: ReservationStatus = strawberry.field(  # type: ignore[valid-type]
        description="EXPIRED as soon as `expiresAt` has passed, even before the sweeper ran."
    )
    expires_at: datetime
    created_at: datetime
    row_id: strawberry.Private[int]
    product_id: strawberry.Private[int]

    @strawberry.field(graphql_type=Product)  # type: ignore[untyped-decorator]
    async def product(self, info: Info) -> Product:
        row = await info.context.loader(ProductByIdLoader).load(self.product_id)
        return Product.from_row(row)

    @classmethod
    def from_row(cls, row: Any) -> "Reservation":
        return cls(
            id=strawberry.ID(to_global_id("Reservation", row.id)),
            quantity=row.quantity,
            status=effective_status(row, datetime.now(UTC)),
            expires_at=row.expires_at,
            created_at=row.created_at,
            row_id=row.id,
            product_id=row.product_id,
        )
