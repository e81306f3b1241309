"""The actor of a verified JWT: the user with its subject, created on first sight when
JWT_AUTO_PROVISION allows, and an admin for the request when its roles say so."""

from contextlib import AbstractAsyncContextManager
from dataclasses import replace

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from db.compiled import Reader, compile_query, fetch
from db.models import User
from db.transactions import run_in_transaction
from services.auth import NOT_CACHED, Actor, ActorCache, NotCached
from services.jwt_tokens import VerifiedToken

MAX_EMAIL_LENGTH = 320  # users.email
MAX_NAME_LENGTH = 200  # users.name


class NoAccount(Exception):
    """A valid token for which there is no user, and none may be made; the message says why."""


_actor_by_subject_query = compile_query(
    select(User.id, User.is_admin).where(User.external_subject == bindparam("subject"))
)


async def actor_for_jwt(
    token: VerifiedToken,
    *,
    reads: AbstractAsyncContextManager[Reader],
    writes: AbstractAsyncContextManager[AsyncSession],
    cache: ActorCache | None,
    auto_provision: bool,
    admin_role: str,
    attempts: int,
) -> Actor:
    """The actor of a verified token: one precompiled lookup by subject in a `reads` turn
    (none while `cache` holds the answer), and a transaction in a `writes` turn the first time
    a subject is seen. The admin role of the token adds to the user's own flag, for this
    request only: it is never stored. NoAccount when there is no user and none may be made."""
    cached = cache.get(token.subject) if cache is not None else NOT_CACHED
    if cached is None:
        raise NoAccount("no user has this token's subject")
    if isinstance(cached, NotCached):
        try:
            actor = await _stored_actor(token, reads, writes, auto_provision, attempts)
        except NoAccount:
            # Without provisioning the subject alone decides; with it, the refusal may be the
            # token's claims (no e-mail, not verified), which the next token may have right.
            if cache is not None and not auto_provision:
                cache.remember(token.subject, None)
            raise
        if cache is not None:
            cache.remember(token.subject, actor)
    else:
        actor = cached
    if admin_role and admin_role in token.roles and not actor.is_admin:
        return replace(actor, is_admin=True)
    return actor


async def _stored_actor(
    token: VerifiedToken,
    reads: AbstractAsyncContextManager[Reader],
    writes: AbstractAsyncContextManager[AsyncSession],
    auto_provision: bool,
    attempts: int,
) -> Actor:
    async with reads as reader:
        rows = await fetch(reader, _actor_by_subject_query, subject=token.subject)
    if rows:
        return Actor(user_id=rows[0]["id"], is_admin=rows[0]["is_admin"])
    if not auto_provision:
        raise NoAccount("no user has this token's subject")
    async with writes as session:
        if session.in_transaction():
            # Something autobegan a read-only transaction: end it, so the new user commits
            # on its own.
            await session.commit()
        return await run_in_transaction(session, lambda s: _provision(s, token), attempts=attempts)


async def _provision(session: AsyncSession, token: VerifiedToken) -> Actor:
    """A customer user for the token's subject, from its `email` and `name`. An existing user
    with that e-mail and no subject yet is linked instead, but only when the provider says the
    e-mail is verified: anyone can put any address in an unverified claim."""
    email = token.email
    if email is None or len(email) > MAX_EMAIL_LENGTH:
        raise NoAccount("the token has no usable email claim to create a user from")
    name = (token.name or email.partition("@")[0])[:MAX_NAME_LENGTH]
    created = (
        await session.execute(
            insert(User)
            .values(email=email, name=name, external_subject=token.subject)
            .on_conflict_do_nothing()
            .returning(User.id, User.is_admin)
        )
    ).one_or_none()
    if created is not None:
        return Actor(user_id=created.id, is_admin=created.is_admin)
    # A conflict: the subject (a concurrent first request, now committed) or the e-mail.
    same_subject = (
        await session.execute(
            select(User.id, User.is_admin).where(User.external_subject == token.subject)
        )
    ).one_or_none()
    if same_subject is not None:
        return Actor(user_id=same_subject.id, is_admin=same_subject.is_admin)
    if not token.email_verified:
        raise NoAccount("a user with this e-mail exists; the token does not say it is verified")
    linked = (
        await session.execute(
            update(User)
            .where(User.email == email, User.external_subject.is_(None))
            .values(external_subject=token.subject)
            .returning(User.id, User.is_admin)
        )
    ).one_or_none()
    if linked is None:
        raise NoAccount("a user with this e-mail belongs to another identity")
    return Actor(user_id=linked.id, is_admin=linked.is_admin)
