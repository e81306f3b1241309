"""Relay global object IDs: opaque base64 of "Type:row-id" (encoded by services.global_ids,
which domain messages and notifications use too)."""

import base64
import binascii

from services.errors import InvalidInput
from services.global_ids import to_global_id

__all__ = ["from_global_id", "row_id_of", "to_global_id"]

MAX_GLOBAL_ID_LENGTH = 100


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
