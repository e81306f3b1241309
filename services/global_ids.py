"""Global object IDs, the only ids clients and webhook consumers see: opaque base64 of
"Type:row-id" (Relay's), the same in API answers, domain messages and notifications. Reading
one back is the edge's business (gql.schema.ids)."""

import base64
from functools import lru_cache


@lru_cache(maxsize=65536)
def to_global_id(type_name: str, row_id: int) -> str:
    return base64.urlsafe_b64encode(f"{type_name}:{row_id}".encode()).decode().rstrip("=")
