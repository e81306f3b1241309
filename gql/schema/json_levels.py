"""Levels of an answer written as JSON by PostgreSQL (docs/execution.md §2d). A resolver asks
`planned_json` for the members of the JSON that the compiled plan completing its field would
take as is at some path below it; the service that owns the rows renders them
(`db.json_objects`), and the resolver hands the plan `orjson.Fragment`s of that JSON."""

from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

from orjson import Fragment

from db.json_objects import JSON_COLUMN, Member, Unrenderable
from gql.engine.plans import Selected, planned_relation
from gql.schema.context import Info

# A service's check that it can render members (raises `Unrenderable`).
RenderCheck = Callable[[tuple[Member, ...]], None]


def planned_json(
    info: Info, path: tuple[str, ...], check: RenderCheck
) -> tuple[Member, ...] | None:
    """The members of the JSON the plan takes at `path` below the field being resolved; None
    when there is no such plan yet (a cold request), when `check` refuses them, or when the
    answer is not written by orjson (`Context.json_fragments`: in-process execution)."""
    if not info.context.json_fragments:
        return None
    selected = planned_relation(info, path)
    return None if selected is None else _renderable(selected, check)


@lru_cache(maxsize=512)
def _renderable(selected: tuple[Selected, ...], check: RenderCheck) -> tuple[Member, ...] | None:
    members = _members(selected)
    try:
        check(members)
    except Unrenderable:
        return None
    return members


def _members(selected: tuple[Selected, ...]) -> tuple[Member, ...]:
    """A plan's selection as JSON members: a field as the attribute of its Python name (the
    services name theirs after ours), `__typename` as the constant the plan writes."""
    return tuple(
        Member(field.key, field.name, _members(field.below), field.constant) for field in selected
    )


def json_nodes(rows: Iterable[Any]) -> list[Fragment]:
    """The objects a list statement rendered with `planned_json`'s members (in its column
    `JSON_COLUMN`), as the fragments the plan takes."""
    return [Fragment(row[JSON_COLUMN]) for row in rows]
