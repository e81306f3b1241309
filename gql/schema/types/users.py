"""The User type: a customer or an administrator."""

from datetime import datetime
from typing import Any

import strawberry

from gql.schema.context import Info
from gql.schema.ids import row_id_of, to_global_id
from gql.schema.loaders import UserByIdLoader
from gql.schema.types.common import Node


@strawberry.federation.type(keys=["id"])
class User(Node):
    id: strawberry.ID
    email: str
    name: str
    is_admin: bool
    created_at: datetime
    row_id: strawberry.Private[int]

    @classmethod
    def from_row(cls, row: Any) -> "User":
        return cls(
            id=strawberry.ID(to_global_id("User", row["id"])),
            email=row["email"],
            name=row["name"],
            is_admin=row["is_admin"],
            created_at=row["created_at"],
            row_id=row["id"],
        )

    @classmethod
    async def resolve_reference(cls, info: Info, id: strawberry.ID) -> "User | None":
        """A federation gateway's reference: like `node(id:)`, only users the viewer may read
        (the loader asks for a viewer and filters by the services' readable statement)."""
        row = await info.context.loader(UserByIdLoader).load(row_id_of(id, "User"))
        return None if row is None else cls.from_row(row)
