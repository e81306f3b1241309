"""The servers under test, each started alone on the bench database and stopped after it:
this service and the floor under gunicorn with gunicorn.conf.py, and PostGraphile v4."""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from core.settings import PROJECT_ROOT

BENCH_DIR = Path(__file__).resolve().parent
POSTGRAPHILE_DIR = BENCH_DIR / "postgraphile"
POSTGRAPHILE_BIN = POSTGRAPHILE_DIR / "node_modules" / ".bin" / "postgraphile"
HIGH_LIMIT = "100000000/minute"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def redis_reachable(host: str = "127.0.0.1", port: int = 6379) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Server:
    """A running target: its process tree and where it answers."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    log_file: object = field(repr=False, default=None)

    def cpu_seconds(self) -> float:
        """User + system CPU of the whole process tree so far, reaped children included."""
        return tree_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            # SIGTERM: gunicorn and node shut down gracefully (pools closed, lifespans run).
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if hasattr(self.log_file, "close"):
            self.log_file.close()


def worker_rss_mib(pid: int) -> float | None:
    """Mean resident memory of the processes that serve (the tree's leaves: gunicorn's or
    Node's cluster workers, or the one process when it serves alone), in MiB."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
        leaves = [process for process in tree if not process.children()]
        sizes = [process.memory_info().rss for process in leaves]
    except psutil.NoSuchProcess:
        return None
    return sum(sizes) / len(sizes) / 2**20 if sizes else None


def tree_cpu_seconds(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        # children_* hold the CPU of children already waited for (recycled workers, exited
        # backends), which would otherwise vanish from the sum.
        total += times.user + times.system + times.children_user + times.children_system
    return total


def _gunicorn_env(database_url: str, port: int, workers: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": database_url,
            "BIND": f"127.0.0.1:{port}",
            "WEB_CONCURRENCY": str(workers),
            "ENVIRONMENT": "production",
            "LOG_LEVEL": "WARNING",
            # No recycling in the middle of a measurement.
            "MAX_REQUESTS": "0",
            # Rate limits stay on (their cost is part of serving) but far above the load.
            "RATE_LIMIT_DEFAULT": HIGH_LIMIT,
            "RATE_LIMIT_FIELDS": (
                f'{{"createOrder": "{HIGH_LIMIT}", "cancelOrder": "{HIGH_LIMIT}", '
                f'"reserveProduct": "{HIGH_LIMIT}", "releaseReservation": "{HIGH_LIMIT}"}}'
            ),
            # Production refuses to start with Redis but no explicit choice.
            "RATE_LIMIT_FAIL_OPEN": "true",
        }
    )
    if redis_reachable():
        env["REDIS_URL"] = "redis://127.0.0.1:6379/0"
    else:
        env.pop("REDIS_URL", None)
    return env


def start(target: str, *, database_url: str, node_dsn: str, workers: int, log_dir: Path) -> Server:
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{target}.log"
    log_file = log_path.open("wb")
    if target in ("ours", "floor"):
        app = "gql.app:app" if target == "ours" else "bench.floor:app"
        command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", app]
        env = _gunicorn_env(database_url, port, workers)
    elif target == "postgraphile":
        command = [
            "node",
            str(POSTGRAPHILE_BIN),
            "--connection",
            node_dsn,
            "--schema",
            "public,bench_pg",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-query-log",
            "--disable-graphiql",
            # The service's pool may grow to pool size + overflow (20) per process.
            "--max-pool-size",
            "20",
        ]
        if workers > 1:
            command += ["--cluster-workers", str(workers)]
        env = dict(os.environ, NODE_ENV="production")
    else:
        raise ValueError(f"unknown target {target!r}")
    process = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
    )
    return Server(target, process, f"http://127.0.0.1:{port}/graphql", log_path, log_file)


def wait_ready(server: Server, body: bytes, timeout: float = 60.0) -> None:
    """Until the server answers a real operation (its pool and schema are up)."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.process.returncode}; "
                f"see {server.log_path}:\n{server.log_path.read_text()[-2000:]}"
            )
        try:
            response = httpx.post(
                server.url,
                content=body,
                headers={"Content-Type": "application/json"},
                timeout=5,
            )
            if response.status_code == 200:
                return
            last_error = f"HTTP {response.status_code}: {response.text[:300]}"
        except httpx.HTTPError as error:
            last_error = str(error)
        time.sleep(0.3)
    raise RuntimeError(f"{server.name} not ready after {timeout}s: {last_error}")
