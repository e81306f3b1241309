"""The per-request GraphQL context: database access, viewer, loaders, background tasks."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.background import BackgroundTasks
from strawberry.types import Info as StrawberryInfo

from core.settings import Settings
from db.compiled import Reader
from db.reads import PooledReads
from gql.errors import RequestFinished, Unauthenticated
from services.auth import Actor


class RequestLoader(Protocol):
    """A DataLoader of one request, made from its context (`gql.schema.loaders`)."""

    def __init__(self, context: "Context") -> None: ...


LoaderT = TypeVar("LoaderT", bound=RequestLoader)
T = TypeVar("T")


class Context:
    """Nothing in here outlives the request. `background_tasks` run once the response is sent
    (the endpoint awaits them), with the request's correlation ID.

    Database access goes through two doors, one at a time: `read_turn` for compiled reads (on
    `reads`, a pooled connection, when given: no ORM session is made for a read-only request),
    `session_turn` for the ORM and transactions (the session is made on first use, and the
    read connection goes back to the pool first, so a request holds one connection at most)."""

    def __init__(
        self,
        *,
        sessions: Callable[[], AsyncSession],
        settings: Settings,
        viewer: Actor | None,
        auth_error: str | None,
        reads: PooledReads | None = None,
        correlation_id: str | None = None,
        background_tasks: BackgroundTasks | None = None,
        json_fragments: bool = False,
    ) -> None:
        self._sessions = sessions
        self._session: AsyncSession | None = None
        self.reads = reads
        self.settings = settings
        self.viewer = viewer
        self.auth_error = auth_error
        self.correlation_id = correlation_id
        self.background_tasks = background_tasks or BackgroundTasks()
        # The answer is written by orjson, which copies an `orjson.Fragment` into it as is, and
        # its bytes need not stay the same warm or cold (no ETag): a resolver may then hand a
        # compiled plan JSON that PostgreSQL built (gql.schema.json_levels). An in-process
        # caller of `schema.execute` gets objects, and so does a GET (see the endpoint).
        self.json_fragments = json_fragments
        # One connection cannot run two statements at once, but loaders of different types
        # dispatch their batches as concurrent tasks: they take turns through this lock.
        self._db_lock = asyncio.Lock()
        self._closed = False
        self._session_turn = SessionTurn(self)
        self._read_turn = ReadTurn(self)
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
        """`async with context.session_turn() as session:` the ORM session, to this caller
        alone until the block ends. Every use of the database goes through here or
        `read_turn`: root fields and loaders run as concurrent tasks, one connection runs one
        statement at a time, and once the request has closed (see `close`) a resolver still
        running must not check out a new connection."""
        return self._session_turn

    def read_turn(self) -> "ReadTurn":
        """`async with context.read_turn() as reader:` where compiled reads run
        (`db.compiled.fetch`): the pooled read connection, or the session while it is in a
        transaction (a write's own reads see its writes)."""
        return self._read_turn

    async def query(self, operation: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """`operation(session, ...)` in the session's turn (`session_turn`)."""
        async with self.session_turn() as session:
            return await operation(session, *args, **kwargs)

    async def read(self, operation: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """`operation(reader, ...)` in a read turn (`read_turn`)."""
        async with self.read_turn() as reader:
            return await operation(reader, *args, **kwargs)

    async def close(self) -> None:
        """Give the connection back to the pool, once the statement running now (if any) is
        done. An operation can end early (a non-null field failed) while sibling resolvers are
        still loading, and graphql-core settles those in the background: they wait for their
        turn behind this one and then find the request over, instead of racing the close."""
        async with self._db_lock:
            self._closed = True
            try:
                if self.reads is not None:
                    await self.reads.release()
            finally:
                if self._session is not None:
                    await self._session.close()

    async def release(self) -> None:
        """Give the connection back to the pool and forget what was loaded, the context staying
        usable: between the events of a subscription, which may be hours apart."""
        async with self._db_lock:
            self._loaders.clear()
            session, self._session = self._session, None
            try:
                if self.reads is not None:
                    await self.reads.release()
            finally:
                if session is not None:
                    await session.close()

    async def _enter(self) -> None:
        await self._db_lock.acquire()
        if self._closed:
            self._db_lock.release()
            raise RequestFinished

    def _session_now(self) -> AsyncSession:
        if self._session is None:
            self._session = self._sessions()
        return self._session

    def forget_loaded(self) -> None:
        """Drop every loader (and its cache): after a write, loaded rows may be stale."""
        self._loaders.clear()

    def require_viewer(self) -> Actor:
        if self.viewer is None:
            raise Unauthenticated(self.auth_error or "authentication required")
        return self.viewer


class _Turn:
    """A door of `Context`: a class, not a generator-based context manager, as it runs for
    every statement of a request; one of each per context, its state is the lock's."""

    __slots__ = ("_context",)

    def __init__(self, context: Context) -> None:
        self._context = context

    async def __aexit__(self, *_exc: object) -> None:
        self._context._db_lock.release()


class SessionTurn(_Turn):
    """`Context.session_turn`: the ORM session, the read connection given back first."""

    __slots__ = ()

    async def __aenter__(self) -> AsyncSession:
        context = self._context
        await context._enter()
        if context.reads is not None and context.reads.holds_connection:
            try:
                await context.reads.release()  # one connection per request at most
            except BaseException:
                context._db_lock.release()
                raise
        return context._session_now()


class ReadTurn(_Turn):
    """`Context.read_turn`: the pooled reads, or the session while in a transaction."""

    __slots__ = ()

    async def __aenter__(self) -> Reader:
        context = self._context
        await context._enter()
        session = context._session
        if context.reads is None or (session is not None and session.in_transaction()):
            return context._session_now()
        return context.reads


Info = StrawberryInfo[Context, None]
