"""A read takes a ready pooled connection without SQLAlchemy's greenlet (checkout_at_once in
db/engine.py), and what the awaited checkout did still happens: a connection opened, waited
for, an idle one pinged, a dead one replaced."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from core.settings import Settings
from db.engine import checkout_at_once, create_db_engine
from db.reads import PooledReads


async def test_a_ready_connection_is_taken_at_once_and_the_others_awaited(
    database_url: str,
) -> None:
    settings = Settings(environment="test", redis_url=None, db_pool_size=1, db_max_overflow=0)
    engine = create_db_engine(database_url, settings)
    pool = engine.sync_engine.pool
    try:
        assert checkout_at_once(engine) is None  # the pool would have to open one
        reads = PooledReads(engine)
        driver = await reads.driver()  # so it is opened the awaited way
        assert await driver.fetchval("SELECT 1") == 1
        assert checkout_at_once(engine) is None  # the only one is out: it would wait
        await reads.release()
        assert pool.checkedout() == 0
        ready = checkout_at_once(engine)
        assert ready is not None and ready.driver_connection is driver
        ready.close()
        assert pool.checkedout() == 0
    finally:
        await engine.dispose()


class _Proxy:
    """A TCP proxy to the test server that can make its connections die unseen: once doomed,
    a connection is closed the moment its client sends anything, as a connection through a
    failed-over server or a proxy that timed it out dies at its next use."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        socket_directory = url.query.get("host")
        self._unix_path = (
            f"{socket_directory}/.s.PGSQL.{url.port or 5432}"
            if isinstance(socket_directory, str)
            else None
        )
        self._upstream = (url.host or "127.0.0.1", url.port or 5432)
        self._url = url.difference_update_query(["host"])
        self._doomed: set[asyncio.StreamWriter] = set()
        self._clients: set[asyncio.StreamWriter] = set()
        self.port = 0

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self._url.set(host="127.0.0.1", port=self.port).render_as_string(
                hide_password=False
            )
        finally:
            server.close()
            for writer in self._clients:
                writer.close()

    def doom_all(self) -> None:
        self._doomed |= self._clients

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._unix_path is not None:
            up_reader, up_writer = await asyncio.open_unix_connection(self._unix_path)
        else:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        self._clients.add(writer)
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer, client=writer)),
            asyncio.ensure_future(self._pump(up_reader, writer, client=None)),
        ]
        # One side closed: close the other (a client's close waits for the server's).
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for side in (writer, up_writer):
            side.close()
        for pump in pumps:
            pump.cancel()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: asyncio.StreamWriter | None,
    ) -> None:
        while data := await reader.read(65536):
            if client is not None and client in self._doomed:
                client.close()
                writer.close()
                return
            writer.write(data)
            await writer.drain()


async def test_an_idle_connection_is_pinged_after_an_at_once_checkout_and_replaced_if_dead(
    database_url: str,
) -> None:
    proxy = _Proxy(database_url)
    async with proxy.serving() as proxied_url:
        settings = Settings(
            environment="test",
            redis_url=None,
            db_pool_size=1,
            db_max_overflow=0,
            db_pool_ping_after=0.1,
        )
        engine = create_db_engine(proxied_url, settings)
        pings: list[str] = []

        def record_ping(record: Any) -> None:
            if record.query == ";":
                pings.append(record.query)

        try:
            reads = PooledReads(engine)
            first = await reads.driver()
            first.add_query_logger(record_ping)
            await reads.release()

            # Idle past DB_POOL_PING_AFTER, alive: pinged, and kept.
            await asyncio.sleep(0.15)
            reads = PooledReads(engine)
            assert await reads.driver() is first
            await asyncio.sleep(0)  # query loggers are called soon, not at once
            assert pings == [";"]
            await reads.release()

            # Idle, and dead without the client knowing: the ping fails, a new one is opened.
            await asyncio.sleep(0.15)
            proxy.doom_all()
            reads = PooledReads(engine)
            second = await reads.driver()
            assert second is not first
            assert await second.fetchval("SELECT 2") == 2
            await reads.release()
            assert engine.sync_engine.pool.checkedout() == 0
        finally:
            await engine.dispose()


@pytest.mark.parametrize("idle", [False, True])
async def test_a_busy_connection_is_not_pinged(database_url: str, idle: bool) -> None:
    """Only an idle one pays the round trip (checked both ways, so the check can fail)."""
    settings = Settings(environment="test", redis_url=None, db_pool_size=1, db_pool_ping_after=0.1)
    engine = create_db_engine(database_url, settings)
    pings: list[str] = []
    try:
        reads = PooledReads(engine)
        driver = await reads.driver()
        driver.add_query_logger(lambda record: pings.append(record.query))
        await reads.release()
        if idle:
            await asyncio.sleep(0.15)
        reads = PooledReads(engine)
        assert await reads.driver() is driver
        await reads.release()
        await asyncio.sleep(0)
        assert pings == ([";"] if idle else [])
    finally:
        await engine.dispose()
