"""`column = ANY(:array)`: one statement text whatever the number of keys, so the prepared
statement cache is hit (an expanding `IN (...)` makes a new statement per list length)."""

from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, any_, bindparam
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import InstrumentedAttribute


def equals_any(column: InstrumentedAttribute[Any], values: Iterable[Any]) -> ColumnElement[bool]:
    array = bindparam(None, list(values), type_=ARRAY(column.type))
    return column == any_(array)


def equals_any_parameter(
    column: InstrumentedAttribute[Any], name: str = "keys"
) -> ColumnElement[bool]:
    """`column = ANY(:name)` with the array bound at execution, for statements compiled once."""
    return column == any_(bindparam(name, type_=ARRAY(column.type)))
