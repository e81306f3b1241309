"""`make stack` (`python -m stack`): the production topology on this machine. PostgreSQL (the
embedded one, or DATABASE_URL's) migrated as a deploy does it, PgBouncer in transaction mode,
Redis (REDIS_URL's, or a redis-server of its own), STACK_INSTANCES service instances under
gunicorn.conf.py, the outbox worker, and HAProxy in front; prints the URL, and stops everything
on Ctrl-C or SIGTERM, or when any part dies, leaving no process behind."""

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url

from core.settings import PROJECT_ROOT, Settings, get_settings
from db.embedded import resolve_database_url, stop_embedded_postgres
from db.engine import create_db_engine
from db.migrate import upgrade_to_head_async
from db.seed import demo_users, seed_database
from stack.configs import PgBouncerConfig, haproxy_cfg

logger = logging.getLogger("stack")
STARTUP_TIMEOUT = 90.0
STOP_TIMEOUT = 20.0
LEFTOVERS = "running.json"
# What the developer's environment must not decide for the processes the stack configures.
_OWN_VARIABLES = {
    "DATABASE_URL",
    "EVENTS_DATABASE_URL",
    "DB_PGBOUNCER",
    "REDIS_URL",
    "WEB_CONCURRENCY",
    "BIND",
    "PROMETHEUS_MULTIPROC_DIR",
    "TRUSTED_PROXIES",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    environ = os.environ
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--instances", type=int, default=int(environ.get("STACK_INSTANCES", "2")),
        help="service instances behind HAProxy (STACK_INSTANCES, default 2)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=int(environ.get("STACK_WORKERS", "1")),
        help="gunicorn workers per instance (STACK_WORKERS, default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--port", type=int, default=int(environ.get("STACK_PORT", "8080")),
        help="HAProxy's port (STACK_PORT, default 8080); its statistics page is the next one",
    )  # fmt: skip
    parser.add_argument(
        "--pool", type=int, default=int(environ.get("STACK_PGBOUNCER_POOL", "10")),
        help="PgBouncer's server connections (STACK_PGBOUNCER_POOL, default 10)",
    )  # fmt: skip
    return parser.parse_args(argv)


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    log: Path


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the stack process dies, however it dies
    (Linux's PR_SET_PDEATHSIG), so even a SIGKILL of the stack leaves nothing behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


class Stack:
    def __init__(self, settings: Settings, options: argparse.Namespace) -> None:
        self.settings = settings
        self.options = options
        self.folder = settings.data_dir / "stack"
        self.children: list[Child] = []

    async def start(
        self, command: list[str], name: str, env: dict[str, str] | None = None
    ) -> Child:
        log = self.folder / f"{name}.log"
        with log.open("ab") as sink:
            process = await asyncio.create_subprocess_exec(
                *command,
                cwd=PROJECT_ROOT,
                env=env,
                stdout=sink,
                stderr=sink,
                # Its own session: Ctrl-C reaches the stack alone, which stops the parts in order.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        child = Child(name, process, log)
        self.children.append(child)
        self.note_children()
        return child

    def note_children(self) -> None:
        """The running parts, for `stop_leftovers` should this process be killed outright."""
        listed = {str(c.process.pid): _cmdline(c.process.pid) for c in self.children}
        (self.folder / LEFTOVERS).write_text(json.dumps(listed))

    def stop_leftovers(self) -> None:
        """Parts a previous stack left running when it was killed outright: those that did
        not get its death signal (PgBouncer drops it when it changes user)."""
        path = self.folder / LEFTOVERS
        if not path.exists():
            return
        for pid, cmdline in json.loads(path.read_text()).items():
            if cmdline and _cmdline(int(pid)) == cmdline:  # the same process, not a reused pid
                logger.info("stopping a previous stack's %s (pid %s)", cmdline.split()[0], pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGTERM)
        path.unlink()

    async def stop(self) -> None:
        """Everything, newest first (HAProxy before the instances, PgBouncer after them)."""
        for child in reversed(self.children):
            if child.process.returncode is None:
                child.process.terminate()
                try:
                    async with asyncio.timeout(STOP_TIMEOUT):
                        await child.process.wait()
                except TimeoutError:
                    logger.warning("%s did not stop in %ss: killed", child.name, STOP_TIMEOUT)
                    child.process.kill()
                    await child.process.wait()
        self.children.clear()
        (self.folder / LEFTOVERS).unlink(missing_ok=True)

    def died(self) -> Child | None:
        return next((c for c in self.children if c.process.returncode is not None), None)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _binary(name: str) -> str:
    found = shutil.which(name) or next(
        (f"{d}/{name}" for d in ("/usr/sbin", "/usr/bin") if Path(f"{d}/{name}").is_file()), None
    )
    if found is None:
        raise SystemExit(f"{name} is not installed: `make stack` installs it (apt-get, as root)")
    return found


async def _wait_for(
    url: str, child: Child, accept: Callable[[httpx.Response], bool] | None = None
) -> None:
    async with httpx.AsyncClient(timeout=2) as client, asyncio.timeout(STARTUP_TIMEOUT):
        while True:
            if child.process.returncode is not None:
                log = await asyncio.to_thread(child.log.read_text, errors="replace")
                raise SystemExit(f"{child.name} exited:\n{log[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                response = await client.get(url)
                if accept(response) if accept else response.status_code == 200:
                    return
            await asyncio.sleep(0.1)


async def _wait_for_port(port: int, child: Child) -> None:
    async with asyncio.timeout(STARTUP_TIMEOUT):
        while True:
            if child.process.returncode is not None:
                log = await asyncio.to_thread(child.log.read_text, errors="replace")
                raise SystemExit(f"{child.name} exited:\n{log[-3000:]}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return


async def _seed_if_empty(url: str, settings: Settings) -> bool:
    """Demo data into the embedded database the first time, as `make run` does."""
    engine = create_db_engine(url, settings)
    try:
        async with engine.connect() as connection:
            empty = not await connection.scalar(text("SELECT EXISTS (SELECT 1 FROM users)"))
    finally:
        await engine.dispose()
    if empty:
        await seed_database(
            url,
            users=settings.seed_users,
            products=settings.seed_products,
            orders=settings.seed_orders,
            seed=settings.seed,
        )
    return empty


async def run(settings: Settings, options: argparse.Namespace, stop: asyncio.Event) -> None:
    stack = Stack(settings, options)
    stack.folder.mkdir(parents=True, exist_ok=True)
    stack.folder.chmod(0o755)  # PgBouncer reads its files as another user
    stack.stop_leftovers()
    try:
        # Ctrl-C during the startup stops it too.
        up = asyncio.create_task(_bring_up(stack, settings, options))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({up, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not up.done():
            up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await up
        else:
            up.result()
        while not stop.is_set():
            dead = stack.died()
            if dead is not None:
                log = await asyncio.to_thread(dead.log.read_text, errors="replace")
                print(
                    f"{dead.name} died (exit {dead.process.returncode}); stopping:\n{log[-2000:]}"
                )
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
    finally:
        print("stopping the stack…", flush=True)
        await stack.stop()
        await asyncio.to_thread(stop_embedded_postgres)
        print("stopped", flush=True)


async def _bring_up(stack: Stack, settings: Settings, options: argparse.Namespace) -> None:
    # PostgreSQL, then the deploy step: migrations before any instance starts.
    direct = await asyncio.to_thread(resolve_database_url, settings.database_url, settings.data_dir)
    await upgrade_to_head_async(direct)
    demo = settings.database_url is None and not settings.is_production
    if demo and await _seed_if_empty(direct, settings):
        print(f"seeded demo data (seed {settings.seed})")
    base = {key: value for key, value in os.environ.items() if key not in _OWN_VARIABLES}

    redis_url = settings.redis_url
    if redis_url is None:
        port = _free_port()
        redis = await stack.start(
            [_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(stack.folder)],
            "redis",
        )  # fmt: skip
        await _wait_for_port(port, redis)
        redis_url = f"redis://127.0.0.1:{port}/0"

    server = make_url(direct)
    connections = options.instances * options.workers * settings.db_pool_size
    bouncer = PgBouncerConfig(
        server=server,
        port=_free_port(),
        pool_size=options.pool,
        max_client_connections=connections + 100,  # the worker, tools, headroom
    )
    (stack.folder / "userlist.txt").write_text(bouncer.userlist())
    (stack.folder / "pgbouncer.ini").write_text(bouncer.ini(stack.folder / "userlist.txt"))
    for name in ("userlist.txt", "pgbouncer.ini"):
        (stack.folder / name).chmod(0o644)
    user = bouncer.run_as()
    ini = str(stack.folder / "pgbouncer.ini")
    command = [_binary("pgbouncer"), *(["-u", user] if user else []), ini]
    pgbouncer = await stack.start(command, "pgbouncer")
    await _wait_for_port(bouncer.port, pgbouncer)
    pooled = server.set(host="127.0.0.1", port=bouncer.port, query={}).render_as_string(
        hide_password=False
    )

    service_env = {
        **base,
        "DATABASE_URL": pooled,
        "DB_PGBOUNCER": "true",
        # LISTEN (subscriptions' change feed) needs a session: the server itself.
        "EVENTS_DATABASE_URL": direct,
        "REDIS_URL": redis_url,
        "RATE_LIMIT_FAIL_OPEN": os.environ.get("RATE_LIMIT_FAIL_OPEN", "true"),
        "TRUSTED_PROXIES": "127.0.0.1",  # HAProxy's X-Forwarded-For
    }
    ports = []
    for n in range(1, options.instances + 1):
        port = _free_port()
        metrics = stack.folder / f"metrics-{n}"
        env = {
            **service_env,
            "WEB_CONCURRENCY": str(options.workers),
            "BIND": f"127.0.0.1:{port}",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        }
        gunicorn = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "gql.app:app"]
        instance = await stack.start(gunicorn, f"instance-{n}", env)
        ports.append((port, instance))
    for port, instance in ports:
        await _wait_for(f"http://127.0.0.1:{port}/readyz", instance)
    await stack.start([sys.executable, "-m", "services.worker"], "worker", service_env)

    config = stack.folder / "haproxy.cfg"
    stats = options.port + 1
    config.write_text(
        haproxy_cfg(port=options.port, stats_port=stats, backends=[p for p, _ in ports])
    )
    haproxy = await stack.start([_binary("haproxy"), "-db", "-f", str(config)], "haproxy")
    await _wait_for(f"http://127.0.0.1:{options.port}/readyz", haproxy)

    print(
        f"\nGraphQL: http://127.0.0.1:{options.port}/graphql\n"
        f"  HAProxy -> {options.instances} instance(s) x {options.workers} gunicorn worker(s) "
        f"(ports {', '.join(str(p) for p, _ in ports)}), statistics http://127.0.0.1:{stats}/\n"
        f"  PgBouncer 127.0.0.1:{bouncer.port} (transaction mode, {options.pool} server "
        f"connections) -> PostgreSQL; Redis {redis_url}; the outbox worker\n"
        f"  logs in {stack.folder}/\n"
        "Ctrl-C (or SIGTERM) stops everything.",
        flush=True,
    )
    if demo:
        print(f"Demo tokens (seed {settings.seed}), send as 'Authorization: Bearer <token>':")
        for user_ in demo_users(min(3, settings.seed_users), settings.seed):
            role = "admin   " if user_.is_admin else "customer"
            print(f"  {role} {user_.email:<36} {user_.token}", flush=True)


def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)
    settings = get_settings()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await run(settings, options, stop)

    asyncio.run(serve())


if __name__ == "__main__":
    main()
