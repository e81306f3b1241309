"""JSON objects built by PostgreSQL (`json_build_object`), for reads whose answer is only passed
on. A caller describes the object it wants as members (a key, and the attribute it holds, or a
constant); the module that owns a table says which attributes it can render and how. Building
the JSON where the rows are saves the process from decoding rows into objects only to encode
them again (docs/execution.md, "Levels built as JSON")."""

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    SQLColumnExpression,
    Text,
    case,
    cast,
    extract,
    func,
    literal_column,
)

# Keys and constants are written into the SQL text (a statement is compiled once per shape and
# its parameters must all be named), so only such plain words are accepted.
_PLAIN = re.compile(r"[_A-Za-z][_0-9A-Za-z:]*\Z")
# json_build_object takes at most 100 arguments: a key and a value per member.
MAX_MEMBERS = 50


class Unrenderable(Exception):
    """The members ask for something the attributes cannot render."""


@dataclass(frozen=True, eq=False)
class Member:
    """One member of a JSON object: its key, and either the attribute it holds (with the
    members of that attribute's own object, for an object-valued attribute) or a constant
    text. Compared and hashed by identity: a caller makes each shape once and reuses it, so a
    cache keyed by shapes costs no deep hashing."""

    key: str
    attribute: str | None = None
    members: tuple["Member", ...] = ()
    constant: str | None = None


Render = Callable[[tuple[Member, ...]], SQLColumnExpression[Any]]


def text_literal(value: str) -> ColumnElement[str]:
    """`value` as an SQL string literal; only plain words (letters, digits, `_`, `:`)."""
    if not _PLAIN.match(value):
        raise Unrenderable(f"not a plain word: {value!r}")
    return literal_column(f"'{value}'", Text)


def value(expression: SQLColumnExpression[Any]) -> Render:
    """An attribute rendered as `expression` (JSON's own form of its SQL type)."""

    def render(members: tuple[Member, ...]) -> SQLColumnExpression[Any]:
        if members:
            raise Unrenderable("a plain value has no members")
        return expression

    return render


# to_char patterns: constants of this module, written into the SQL as they are.
_ISO_SECONDS: ColumnElement[str] = literal_column("""'YYYY-MM-DD"T"HH24:MI:SS'""")
_MICROSECONDS: ColumnElement[str] = literal_column("'.US'")


def iso_timestamp(column: SQLColumnExpression[Any]) -> ColumnElement[str]:
    """A `timestamptz` as Python writes the datetime asyncpg reads (UTC) with `isoformat()`:
    microseconds only when they are not zero, then `+00:00`; null stays null."""
    utc = func.timezone(literal_column("'UTC'"), column)
    whole_second = extract("microseconds", utc).op("%")(
        literal_column("1000000")
    ) == literal_column("0")
    fraction = case((whole_second, literal_column("''")), else_=func.to_char(utc, _MICROSECONDS))
    return func.to_char(utc, _ISO_SECONDS).concat(fraction).concat(literal_column("'+00:00'"))


def money(amount: SQLColumnExpression[Any], currency: SQLColumnExpression[Any]) -> Render:
    """Money as the API writes it: the amount as the exact decimal text PostgreSQL gives (as
    `db.compiled.exact_text` reads it), and its currency code."""
    return nested({"amount": value(cast(amount, Text)), "currency": value(currency)})


def nested(attributes: Mapping[str, Render]) -> Render:
    """An attribute rendered as an object of its own, with these attributes."""

    def render(members: tuple[Member, ...]) -> SQLColumnExpression[Any]:
        return json_object(members, attributes)

    return render


def json_object(
    members: tuple[Member, ...], attributes: Mapping[str, Render]
) -> ColumnElement[Any]:
    """`json_build_object` of `members`, in their order, each rendered by its attribute."""
    if not members or len(members) > MAX_MEMBERS:
        raise Unrenderable(f"{len(members)} members")
    arguments: list[SQLColumnExpression[Any]] = []
    for member in members:
        arguments.append(text_literal(member.key))
        if member.attribute is None:
            if member.constant is None:
                raise Unrenderable(f"member {member.key!r} holds nothing")
            arguments.append(text_literal(member.constant))
            continue
        render = attributes.get(member.attribute)
        if render is None:
            raise Unrenderable(f"no attribute {member.attribute!r}")
        arguments.append(render(member.members))
    return func.json_build_object(*arguments)


JSON_COLUMN = "json"


def json_column(
    members: tuple[Member, ...], attributes: Mapping[str, Render]
) -> ColumnElement[str]:
    """`json_object` as its text, under the column name `JSON_COLUMN`: as text, because the
    pool's connections decode `json` into Python objects, and the answer takes it as written."""
    return cast(json_object(members, attributes), Text).label(JSON_COLUMN)
