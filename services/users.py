"""Reading users: a user sees their own profile; an admin sees everyone's."""

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from db.arrays import equals_any
from db.models import User
from db.rows import LightRow, LightSelect
from services.auth import Actor

USER_COLUMNS = (User.id, User.email, User.name, User.is_admin, User.created_at)


def readable_users(actor: Actor) -> LightSelect:
    statement = select(*USER_COLUMNS)
    if not actor.is_admin:
        statement = statement.where(User.id == actor.user_id)
    return statement


async def readable_users_by_ids(
    session: AsyncSession, actor: Actor, ids: Sequence[int]
) -> dict[int, LightRow]:
    rows = await session.execute(readable_users(actor).where(equals_any(User.id, ids)))
    return {row.id: row for row in rows}
