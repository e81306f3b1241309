"""Subscriptions under load: latency from commit to event, and memory per open subscription.

`python -m bench.subscriptions` (TEST_DATABASE_URL's server, else the embedded one): a fresh
migrated database, one server process (uvicorn, `gql.app:app`), SUBSCRIPTIONS subscriptions to
`productStockChanged` over CONNECTIONS WebSockets (PRODUCTS products, each watched by
SUBSCRIPTIONS / PRODUCTS subscriptions); then WRITES single-row stock updates committed from this
process, one every INTERVAL seconds, each event timed from the commit's return to its arrival.
Memory: the server's RSS with every subscription open, less its RSS with one."""

import asyncio
import os
import statistics
import sys
import time

import asyncpg
import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect

from gql.schema.ids import to_global_id
from tests.databases import DatabaseFactory, libpq_dsn, server_url
from tests.edge_support import free_port

SUBSCRIPTIONS = 1000
CONNECTIONS = 50
PRODUCTS = 100
WRITES = 200
INTERVAL = 0.01
QUERY = "subscription S($ids: [ID!]!) { productStockChanged(ids: $ids) { id stock } }"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def open_connection(url: str) -> ClientConnection:
    socket = await connect(url, subprotocols=["graphql-transport-ws"], max_queue=None)  # type: ignore[list-item]
    await socket.send(orjson.dumps({"type": "connection_init", "payload": {}}).decode())
    assert orjson.loads(await socket.recv())["type"] == "connection_ack"
    return socket


def subscribe_message(operation_id: str, product_id: int) -> str:
    variables = {"ids": [to_global_id("Product", product_id)]}
    message = {
        "type": "subscribe",
        "id": operation_id,
        "payload": {"query": QUERY, "variables": variables},
    }
    return orjson.dumps(message).decode()


async def start_server(url: str, port: int) -> asyncio.subprocess.Process:
    env = {**os.environ, "DATABASE_URL": url, "RATE_LIMIT_ENABLED": "false"}
    env["LOG_LEVEL"] = "WARNING"
    env.pop("REDIS_URL", None)
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        "gql.app:app",
        "--port",
        str(port),
        "--no-access-log",
        env=env,
    )
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return server
            except httpx.TransportError:
                await asyncio.sleep(0.1)
    raise RuntimeError("the server did not start")


async def measure(writer: asyncpg.Connection, ids: list[int], pid: int, ws_url: str) -> None:
    warm = await open_connection(ws_url)
    await warm.send(subscribe_message("warm", ids[0]))
    await asyncio.sleep(1)
    baseline = rss_kib(pid)
    sockets = []
    per_connection = SUBSCRIPTIONS // CONNECTIONS
    for c in range(CONNECTIONS):
        socket = await open_connection(ws_url)
        sockets.append(socket)
        for s in range(per_connection):
            await socket.send(subscribe_message(str(s), ids[(c * per_connection + s) % PRODUCTS]))
    await asyncio.sleep(2)
    loaded = rss_kib(pid)

    committed: dict[tuple[int, str], float] = {}
    arrivals: list[tuple[tuple[int, str], float]] = []
    expected = SUBSCRIPTIONS // PRODUCTS * WRITES
    done = asyncio.Event()

    async def read(socket: ClientConnection) -> None:
        async for raw in socket:
            arrived = time.perf_counter()
            message = orjson.loads(raw)
            if message["type"] == "ping":
                await socket.send('{"type":"pong"}')
                continue
            if message["type"] != "next":
                raise RuntimeError(message)
            product = message["payload"]["data"]["productStockChanged"]
            # Timed after every write is in: an event can arrive before its commit's answer
            # does (the listener and the writer are different connections).
            arrivals.append(((int(product["stock"]), product["id"]), arrived))
            if len(arrivals) == expected:
                done.set()

    readers = [asyncio.create_task(read(socket)) for socket in sockets]
    for n in range(WRITES):
        product_id = ids[n % PRODUCTS]
        stock = await writer.fetchval(
            "UPDATE products SET stock = stock - 1 WHERE id = $1 RETURNING stock", product_id
        )
        committed[(stock, to_global_id("Product", product_id))] = time.perf_counter()
        await asyncio.sleep(INTERVAL)
    async with asyncio.timeout(30):
        await done.wait()
    for reader in readers:
        reader.cancel()
    for socket in [warm, *sockets]:
        await socket.close()
    # Negative (an event before its commit's answer) counts as 0.
    latencies = sorted(max(0.0, arrived - committed[key]) for key, arrived in arrivals)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"{SUBSCRIPTIONS} subscriptions on {CONNECTIONS} connections, {WRITES} commits, "
        f"{len(latencies)} events: commit -> event p50 "
        f"{statistics.median(latencies) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms"
    )
    print(
        f"server RSS {baseline / 1024:.1f} MiB with 1 subscription, {loaded / 1024:.1f} MiB "
        f"with {SUBSCRIPTIONS + 1}: {(loaded - baseline) / SUBSCRIPTIONS:.1f} KiB each "
        f"(its share of a WebSocket connection included)"
    )


async def main() -> None:
    databases = DatabaseFactory(server_url())
    await databases.create_template()
    url = await databases.create()
    writer = await asyncpg.connect(libpq_dsn(url))
    ids = [
        await writer.fetchval(
            "INSERT INTO products (sku, name, description, kind, price, currency, stock,"
            " created_at, updated_at) VALUES ($1, $1, '', 'TOUR', 10, 'EUR', 1000000, now(),"
            " now()) RETURNING id",
            f"BENCH-{n}",
        )
        for n in range(PRODUCTS)
    ]
    port = free_port()
    server = await start_server(url, port)
    try:
        await measure(writer, ids, server.pid, f"ws://127.0.0.1:{port}/graphql")
    finally:
        server.terminate()
        await server.wait()
        await writer.close()
        await databases.drop(url)
        await databases.drop_template()


if __name__ == "__main__":
    asyncio.run(main())
