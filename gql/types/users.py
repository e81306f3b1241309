"""The User type: a customer or an administrator."""

from datetime import datetime
from typing import Any

import strawberry

from gql.ids import to_global_id
from gql.types.common import Node


@strawberry.type
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
