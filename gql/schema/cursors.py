"""Opaque, stable keyset cursors: base64 of a small JSON array that names its ordering, so a
cursor from one ordering cannot be replayed against another."""

import base64
import binascii

import orjson

from services.errors import InvalidInput

MAX_CURSOR_LENGTH = 500
# Integer key parts are row ids: PostgreSQL bigint identities, never 0 or negative. Anything
# else would reach the driver and fail there as an unexpected error.
MAX_KEY_ID = 2**63 - 1


def encode_cursor(ordering: str, *key: str | int) -> str:
    payload = orjson.dumps([ordering, *key])
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode_cursor(cursor: str, ordering: str, key_types: tuple[type, ...]) -> tuple[object, ...]:
    """The key parts of `cursor`, checked against the ordering and the expected part types."""
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise InvalidInput("malformed cursor")
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = orjson.loads(base64.urlsafe_b64decode(padded))
    except (binascii.Error, orjson.JSONDecodeError, ValueError) as exc:
        raise InvalidInput("malformed cursor") from exc
    if not isinstance(payload, list) or len(payload) != len(key_types) + 1:
        raise InvalidInput("malformed cursor")
    if payload[0] != ordering:
        raise InvalidInput("cursor belongs to another ordering or list")
    key = tuple(payload[1:])
    # bool is an int in Python, but never a valid key part here.
    for part, expected in zip(key, key_types, strict=True):
        if type(part) is not expected:
            raise InvalidInput("malformed cursor")
        if isinstance(part, int) and not 1 <= part <= MAX_KEY_ID:
            raise InvalidInput("malformed cursor")
    return key


def decode_id_cursor(cursor: str | None, ordering: str) -> int | None:
    """The row id of a cursor of a list ordered by id alone (None for no cursor)."""
    if cursor is None:
        return None
    (row_id,) = decode_cursor(cursor, ordering, (int,))
    return int(str(row_id))
