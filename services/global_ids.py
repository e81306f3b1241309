"""Global object IDs, the only ids clients and webhook consumers see: opaque base64 of
"Type:row-id" (Relay's), the same in API answers, domain messages and notifications. Reading
one back is the edge's business (gql.schema.ids)."""

import base64
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, SQLColumnExpression, Text, cast, func, literal_column

from db.json_objects import text_literal

# PostgreSQL's base64 ends a line after 76 characters (57 bytes), the last line too: a
# global ID must stay shorter.
_MAX_SQL_PREFIX = 56 - len(str(2**63))


@lru_cache(maxsize=65536)
def to_global_id(type_name: str, row_id: int) -> str:
    return base64.urlsafe_b64encode(f"{type_name}:{row_id}".encode()).decode().rstrip("=")


def global_id_sql(type_name: str, row_id: SQLColumnExpression[Any]) -> ColumnElement[str]:
    """`to_global_id(type_name, row_id)` computed by PostgreSQL, for JSON it builds."""
    prefix = f"{type_name}:"
    if len(prefix) > _MAX_SQL_PREFIX:
        raise ValueError(f"type name too long for one base64 line: {type_name!r}")
    encoded = func.encode(
        func.convert_to(text_literal(prefix).concat(cast(row_id, Text)), literal_column("'UTF8'")),
        literal_column("'base64'"),
    )
    url_safe = func.translate(encoded, literal_column("'+/'"), literal_column("'-_'"))
    return func.rtrim(url_safe, literal_column("'='"), type_=Text)
