"""The per-request GraphQL context: session, viewer, loaders, background tasks."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.background import BackgroundTasks
from strawberry.types import Info as StrawberryInfo

from core.settings import Settings
from gql.errors import RequestFinished, Unauthenticated
from services.auth import Actor


class RequestLoader(Protocol):
    """A DataLoader of one request, made from its context (`gql.schema.loaders`)."""

    def __init__(self, context: "Context") -> None: ...


LoaderT = TypeVar("LoaderT", bound=RequestLoader)
T = TypeVar("T")


class Context:
    """Nothing in here outlives the request. `background_tasks` run once the response is sent
    (the endpoint awaits them), with the request's correlation ID."""

    def __init__(
        self,
        *,
        session: AsyncSession,
        settings: Settings,
        viewer: Actor | None,
        auth_error: str | None,
        correlation_id: str | None = None,
        background_tasks: BackgroundTasks | None = None,
    ) -> None:
        self.session = session
        self.settings = settings
        self.viewer = viewer
        self.auth_error = auth_error
        self.correlation_id = correlation_id
        self.background_tasks = background_tasks or BackgroundTasks()
        # One AsyncSession cannot run two statements at once, but loaders of different types
        # dispatch their batches as concurrent tasks: they take turns through this lock.
        self._db_lock = asyncio.Lock()
        self._closed = False
        self._turn = SessionTurn(self)
        self._loaders: dict[type[RequestLoader], RequestLoader] = {}
        # What the `_entities` fields of each operation (by id) have cost so far
        # (gql.schema.federation).
        self.entities_cost_spent: dict[int, int] = {}

    def loader(self, loader_class: type[LoaderT]) -> LoaderT:
        """The request's instance of `loader_class`, made on first use."""
        loader = self._loaders.get(loader_class)
        if loader is None:
            loader = self._loaders[loader_class] = loader_class(self)
        return loader  # type: ignore[return-value]

    def session_turn(self) -> "SessionTurn":
        """`async with context.session_turn() as session:` the session, to this caller alone
        until the block ends. Every use of the session goes through here: root fields and
        loaders run as concurrent tasks, one connection runs one statement at a time, and once
        the request has closed its session (see `close`) a resolver still running must not
        check out a new connection."""
        return self._turn

    async def query(self, operation: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """`operation(session, ...)` in the session's turn (`session_turn`)."""
        async with self.session_turn() as session:
            return await operation(session, *args, **kwargs)

    async def close(self) -> None:
        """Give the connection back to the pool, once the statement running now (if any) is
        done. An operation can end early (a non-null field failed) while sibling resolvers are
        still loading, and graphql-core settles those in the background: they wait for their
        turn behind this one and then find the request over, instead of racing the close."""
        async with self._db_lock:
            self._closed = True
            await self.session.close()

    def forget_loaded(self) -> None:
        """Drop every loader (and its cache): after a write, loaded rows may be stale."""
        self._loaders.clear()

    def require_viewer(self) -> Actor:
        if self.viewer is None:
            raise Unauthenticated(self.auth_error or "authentication required")
        return self.viewer


class SessionTurn:
    """The async context manager of `Context.session_turn`: a class, not a generator, as it
    runs for every statement of every request; one per context, its state is the lock's."""

    __slots__ = ("_context",)

    def __init__(self, context: Context) -> None:
        self._context = context

    async def __aenter__(self) -> AsyncSession:
        context = self._context
        await context._db_lock.acquire()
        if context._closed:
            context._db_lock.release()
            raise RequestFinished
        return context.session

    async def __aexit__(self, *_exc: object) -> None:
        self._context._db_lock.release()


Info = StrawberryInfo[Context, None]
