"""Relay global object IDs: opaque base64 of "Type:row-id"."""

import base64
import binascii
from functools import lru_cache

from services.errors import InvalidInput

MAX_GLOBAL_ID_LENGTH = 100


@lru_cache(maxsize=65536)
def to_global_id(type_name: str, row_id: int) -> str:
    return base64.urlsafe_b64encode(f"{type_name}:{row_id}".encode()).decode().rstrip("=")


def from_global_id(global_id: str) -> tuple[str, int]:
    """(type name, row id) of a global ID; anything malformed is a BAD_USER_INPUT error."""
    if len(global_id) > MAX_GLOBAL_ID_LENGTH:
        raise InvalidInput("malformed ID")
    try:
        padded = global_id + "=" * (-len(global_id) % 4)
        type_name, _, raw_id = base64.urlsafe_b64decode(padded).decode().partition(":")
        row_id = int(raw_id)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"malformed ID {global_id!r}") from exc
    if not type_name or row_id <= 0 or row_id >= 2**63:
        raise InvalidInput(f"malformed ID {global_id!r}")
    return type_name, row_id


def row_id_of(global_id: str, expected_type: str) -> int:
    """The row id inside a global ID that must name `expected_type`."""
    type_name, row_id = from_global_id(global_id)
    if type_name != expected_type:
        raise InvalidInput(f"ID {global_id!r} is not a {expected_type} ID")
    return row_id
