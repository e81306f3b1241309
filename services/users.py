"""Reading users: a user sees their own profile; an admin sees everyone's."""

from collections.abc import Sequence
from functools import lru_cache

from sqlalchemy import bindparam, select

from db.arrays import equals_any_parameter
from db.compiled import CompiledQuery, Reader, Record, compile_query, fetch_by_id
from db.models import User
from db.rows import LightSelect
from services.auth import Actor

USER_COLUMNS = (User.id, User.email, User.name, User.is_admin, User.created_at)


def readable_users(*, admin: bool) -> LightSelect:
    """Every read of users starts here; the actor's id is bound as `:actor_id`."""
    statement = select(*USER_COLUMNS)
    if not admin:
        statement = statement.where(User.id == bindparam("actor_id"))
    return statement


@lru_cache
def _users_by_ids_query(*, admin: bool) -> CompiledQuery:
    return compile_query(readable_users(admin=admin).where(equals_any_parameter(User.id)))


async def readable_users_by_ids(
    reader: Reader, actor: Actor, ids: Sequence[int]
) -> dict[int, Record]:
    query = _users_by_ids_query(admin=actor.is_admin)
    return await fetch_by_id(reader, query, ids, actor_id=actor.user_id)
