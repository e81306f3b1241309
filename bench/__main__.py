"""`make bench`: seed the bench database, then start each target alone on it and drive every
scenario with wrk; print the table and write it to BENCHMARKS.md. A measurement, never a test:
it does not fail on speed.

    python -m bench [--only order_history,products] [--targets floor,ours] [--duration 10]
"""

import argparse
import logging
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench import targets
from bench.database import (
    BenchDatabase,
    StockCheck,
    check_stock,
    open_database,
    prepare,
    products_in_stock,
    reset_writes,
    set_stock,
    statements_executed,
)
from bench.scenarios import KEY, SCENARIOS, TARGETS, VALUE, Context, Request, Scenario
from core.settings import PROJECT_ROOT, get_settings

logger = logging.getLogger("bench")
LUA_SCRIPT = Path(__file__).resolve().parent / "wrk" / "graphql.lua"
STATEMENT_LINE = re.compile(
    r"^(?P<app>[^|\n]*)\|\s*LOG:\s+(?:statement|execute [^:]*):", re.MULTILINE
)
HARNESS_APP = "bench-harness"


@dataclass
class Result:
    target: str
    scenario: str
    requests: int = 0
    seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    rejected: int = 0
    sample: str = ""
    statements: float | None = None
    cpu_ms: float | None = None
    db_cpu_ms: float | None = None
    others_cpu_pct: float | None = None
    workers: int = 1
    rss_mib: float | None = None  # mean resident memory per serving process, after the run
    failed: str = ""  # the run itself could not happen (server did not start...)
    notes: list[str] = field(default_factory=list)

    @property
    def mostly_errors(self) -> bool:
        return self.errors * 2 >= self.requests > 0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def parse_args() -> argparse.Namespace:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated scenarios (default: all)")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated targets")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument(
        "--workers",
        default="1,2",
        help="comma-separated server process counts; every target runs once per count",
    )
    parser.add_argument(
        "--count-requests",
        type=int,
        default=20,
        help="sequential requests per scenario over which SQL statements are counted",
    )
    parser.add_argument(
        "--hot-stock",
        type=int,
        default=1_000_000,
        help="the hot product's stock before reserve_product: by default more than any target "
        "sells, so all measure the same (successful, contended) path; a small value (500) makes "
        "the run end in InsufficientStock and the oversell check bite at zero",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL"),
        help="bench against this PostgreSQL (default: embedded, in DATA_DIR/bench)",
    )
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--products", type=int, default=10000)
    parser.add_argument("--orders", type=int, default=50000)
    parser.add_argument("--seed", type=int, default=settings.seed)
    parser.add_argument("--output", default=str(PROJECT_ROOT / "BENCHMARKS.md"))
    parser.add_argument("--no-output", action="store_true", help="print only")
    args = parser.parse_args()
    args.scenarios = [s for s in args.only.split(",") if s] or list(SCENARIOS)
    args.target_list = [t for t in args.targets.split(",") if t]
    try:
        args.worker_counts = [int(n) for n in args.workers.split(",") if n]
    except ValueError:
        parser.error(f"--workers takes comma-separated counts, not {args.workers!r}")
    if not args.worker_counts or min(args.worker_counts) < 1:
        parser.error("--workers needs counts of at least 1")
    for name in args.scenarios:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    for name in args.target_list:
        if name not in TARGETS:
            parser.error(f"unknown target {name!r}; known: {', '.join(TARGETS)}")
    return args


# --- SQL statement counting: log_statement = all, only around the counting passes -----------


def set_statement_logging(db: BenchDatabase, enabled: bool) -> None:
    """Server-wide, via ALTER SYSTEM + reload: every session picks it up at its next command,
    so connections opened by a server started afterwards log from their first statement."""
    if db.log_path is None:
        return
    if enabled:
        db.execute("ALTER SYSTEM SET log_statement = 'all'")
        db.execute("ALTER SYSTEM SET log_line_prefix = '%a|'")
    else:
        db.execute("ALTER SYSTEM RESET log_statement")
        db.execute("ALTER SYSTEM RESET log_line_prefix")
    db.execute("SELECT pg_reload_conf()")
    time.sleep(0.3)


def count_statements(log_path: Path, start: int) -> int:
    with log_path.open("rb") as log:
        log.seek(start)
        text = log.read().decode("utf-8", "replace")
    return sum(
        1 for match in STATEMENT_LINE.finditer(text) if match.group("app").strip() != HARNESS_APP
    )


def log_size(db: BenchDatabase) -> int:
    return db.log_path.stat().st_size if db.log_path else 0


def fill(template: str, request: Request, index: int, run: str) -> str:
    body = template
    if request.values:
        body = body.replace(VALUE, request.values[index % len(request.values)], 1)
    return body.replace(KEY, f"{run}-{index}")


def counting_pass(
    db: BenchDatabase, server: targets.Server, request: Request, count: int
) -> tuple[float | None, Any]:
    """Statements per request over `count` sequential requests, and the first response."""
    run = f"count-{uuid.uuid4().hex[:8]}"
    headers = {"Content-Type": "application/json", **request.headers}
    first: Any = None
    with httpx.Client(timeout=30) as client:
        # Unmeasured first requests: a new connection's setup queries are not per request.
        for index in range(3):
            client.post(
                server.url, content=fill(request.body, request, index, run), headers=headers
            )
        start = log_size(db)
        executed_before = None if db.log_path else statements_executed(db)
        for index in range(3, count + 3):
            body = fill(request.body, request, index * 101, run)
            response = client.post(server.url, content=body, headers=headers)
            if first is None:
                try:
                    first = response.json()
                except ValueError:
                    first = {"status": response.status_code, "text": response.text[:300]}
    if db.log_path is None:
        executed_after = statements_executed(db) if executed_before is not None else None
        if executed_before is None or executed_after is None:
            return None, first
        # Minus the first statements_executed() query, which the second one counts.
        return (executed_after - executed_before - 1) / count, first
    time.sleep(0.3)  # the log is written asynchronously by the backends
    return count_statements(db.log_path, start) / count, first


# --- load: wrk -----------------------------------------------------------------------------


def run_wrk(
    server: targets.Server,
    request: Request,
    *,
    duration: float,
    connections: int,
    threads: int,
    workdir: Path,
) -> dict[str, Any]:
    body_file = workdir / "body.json"
    headers_file = workdir / "headers.txt"
    values_file = workdir / "values.txt"
    body_file.write_text(request.body)
    headers_file.write_text("".join(f"{k}: {v}\n" for k, v in request.headers.items()))
    values_file.write_text("".join(f"{v}\n" for v in request.values))
    env = dict(
        os.environ,
        BENCH_BODY=str(body_file),
        BENCH_HEADERS=str(headers_file),
        BENCH_VALUES=str(values_file),
        BENCH_REJECTED=request.rejected_marker,
        BENCH_RUN=uuid.uuid4().hex[:12],
    )
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA_SCRIPT),
        server.url,
    ]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    for line in completed.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            result: dict[str, Any] = orjson.loads(line.removeprefix("BENCH_RESULT "))
            return result
    raise RuntimeError(f"wrk gave no result:\n{completed.stdout}\n{completed.stderr}")


# --- one target, all scenarios --------------------------------------------------------------


def prepare_writes(db: BenchDatabase, scenario: Scenario, context: Context, hot_stock: int) -> None:
    reset_writes(db)
    if scenario.name == "reserve_product":
        set_stock(db, context.hot_product_id, hot_stock)


def bench_target(
    target: str,
    scenarios: list[Scenario],
    *,
    db: BenchDatabase,
    context: Context,
    args: argparse.Namespace,
    log_dir: Path,
    workers: int,
) -> tuple[list[Result], dict[str, Any], list[str]]:
    results = [Result(target, s.name, workers=workers) for s in scenarios]
    firsts: dict[str, Any] = {}
    checks: list[str] = []
    set_statement_logging(db, True)
    logger.info("[%s] starting", target)
    server = targets.start(
        target,
        database_url=db.url,
        node_dsn=db.node_dsn,
        workers=workers,
        log_dir=log_dir,
    )
    try:
        ready = SCENARIOS["products"].request(target, context)
        targets.wait_ready(server, ready.body.encode())
        for result, scenario in zip(results, scenarios, strict=True):
            request = scenario.request(target, context)
            if scenario.writes:
                prepare_writes(db, scenario, context, args.hot_stock)
            result.statements, firsts[scenario.name] = counting_pass(
                db, server, request, args.count_requests
            )
        set_statement_logging(db, False)
        # One request per pooled connection so that each applies the reload now, not in
        # the middle of the measurement.
        counting_pass(db, server, ready, 25)
        with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
            for result, scenario in zip(results, scenarios, strict=True):
                request = scenario.request(target, context)
                if scenario.writes:
                    prepare_writes(db, scenario, context, args.hot_stock)
                logger.info("[%s] %s", target, scenario.name)
                if args.warmup > 0:
                    run_wrk(
                        server,
                        request,
                        duration=args.warmup,
                        connections=args.connections,
                        threads=args.wrk_threads,
                        workdir=Path(tmp),
                    )
                cpu_before = server.cpu_seconds()
                db_cpu_before = db_cpu_seconds(db)
                machine_before = machine_busy_seconds()
                wrk_before = wrk_cpu_seconds()
                measured = run_wrk(
                    server,
                    request,
                    duration=args.duration,
                    connections=args.connections,
                    threads=args.wrk_threads,
                    workdir=Path(tmp),
                )
                cpu = server.cpu_seconds() - cpu_before
                db_cpu = db_cpu_seconds(db)
                machine = machine_busy_seconds() - machine_before
                wrk_cpu = wrk_cpu_seconds() - wrk_before
                fill_result(result, measured, cpu, db_cpu, db_cpu_before)
                result.rss_mib = targets.worker_rss_mib(server.process.pid)
                # CPU the machine spent on anything but this run (other jobs on a shared
                # host): the noise under these numbers.
                ours = cpu + wrk_cpu + ((db_cpu - db_cpu_before) if db_cpu and db_cpu_before else 0)
                cores = os.cpu_count() or 1
                result.others_cpu_pct = max(0.0, machine - ours) / (cores * result.seconds) * 100
                if scenario.name == "reserve_product":
                    check = check_stock(db, context.hot_product_id, args.hot_stock)
                    checks.append(describe_stock_check(target, check, result))
    except Exception as error:  # a broken target is reported, and the others still run
        logger.exception("[%s] failed", target)
        for result in results:
            if not result.requests:
                result.failed = str(error).splitlines()[0][:200]
    finally:
        set_statement_logging(db, False)
        server.stop()
    return results, firsts, checks


def machine_busy_seconds() -> float:
    """Non-idle CPU time of the whole machine so far (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(value) for value in fields]
    # user nice system idle iowait irq softirq steal (guest time is already in user).
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def wrk_cpu_seconds() -> float:
    """CPU of the harness's finished children (the wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def db_cpu_seconds(db: BenchDatabase) -> float | None:
    pid = db.postmaster_pid
    return None if pid is None else targets.tree_cpu_seconds(pid)


def fill_result(
    result: Result,
    measured: dict[str, Any],
    cpu: float,
    db_cpu: float | None,
    db_cpu_before: float | None,
) -> None:
    result.requests = int(measured["requests"])
    result.seconds = measured["duration_us"] / 1e6
    result.p50_ms = measured["p50_us"] / 1000
    result.p99_ms = measured["p99_us"] / 1000
    result.errors = measured["non_2xx"] + measured["socket_errors"] + measured["graphql_errors"]
    result.rejected = measured["rejected"]
    result.sample = measured["sample"]
    if result.requests:
        result.cpu_ms = cpu * 1000 / result.requests
        if db_cpu is not None and db_cpu_before is not None:
            result.db_cpu_ms = (db_cpu - db_cpu_before) * 1000 / result.requests


def describe_stock_check(target: str, check: StockCheck, result: Result) -> str:
    verdict = "OVERSOLD" if check.oversold else "no oversell"
    if not check.oversold and check.holds == 0 and result.mostly_errors:
        verdict = "not exercised (the requests failed)"
    return (
        f"{target}: reserveProduct on the hot product: {verdict} (stock {check.stock} + "
        f"held {check.held} = {check.stock + check.held}, started with {check.initial}; "
        f"{check.holds} holds, {result.rejected} requests answered InsufficientStock)"
    )


# --- report ---------------------------------------------------------------------------------


def machine_description(db: BenchDatabase) -> list[str]:
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{mem_kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        memory = "unknown"
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    load = os.getloadavg()
    return [
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {os.cpu_count()} CPUs ({cpu_model}), {memory} RAM, "
        f"{platform.system()} {platform.release()}; load average at start "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        f"- Python {platform.python_version()}, PostgreSQL "
        f"{db.fetchval('SHOW server_version')}, Node {node.stdout.strip()}, "
        f"{(wrk.stdout or wrk.stderr).split(' [')[0].strip()}",
    ]


def _ratio(value: float, reference: float | None) -> str:
    if not reference or not value:
        return "-"
    return f"{value / reference:.2f}x"


def _number(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _reference(result: Result | None) -> float | None:
    if result is None or result.failed or result.mostly_errors:
        return None
    return result.rps


def tables(results: list[Result]) -> list[str]:
    """One table per server process count, ratios within it."""
    lines: list[str] = []
    for workers in sorted({r.workers for r in results}):
        if lines:
            lines.append("")
        lines += [f"{workers} server process(es) per target:", ""]
        lines += table([r for r in results if r.workers == workers])
    return lines


def table(results: list[Result]) -> list[str]:
    by_key = {(r.target, r.scenario): r for r in results}
    lines = [
        "| target | scenario | req/s | p50 ms | p99 ms | errors | refused | SQL/req "
        "| CPU ms/req | DB CPU ms/req | others' CPU | MiB/process | vs floor | vs PostGraphile |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        if r.failed:
            lines.append(
                f"| {r.target} | {r.scenario} | failed: {r.failed} | | | | | | | | | | | |"
            )
            continue
        floor = by_key.get(("floor", r.scenario))
        peer = by_key.get(("postgraphile", r.scenario))
        if r.mostly_errors:
            # Fast errors are not a speed: no ratio for a run that mostly failed.
            lines.append(
                f"| {r.target} | {r.scenario} | ({r.rps:,.0f}) | {r.p50_ms:.1f} "
                f"| {r.p99_ms:.1f} | **{r.errors}** | {r.rejected} | {_number(r.statements)} "
                f"| {_number(r.cpu_ms, 2)} | {_number(r.db_cpu_ms, 2)} "
                f"| {_number(r.others_cpu_pct, 0)}% | {_number(r.rss_mib, 0)} | n/a | n/a |"
            )
            continue
        lines.append(
            f"| {r.target} | {r.scenario} | {r.rps:,.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} "
            f"| {r.errors} | {r.rejected} | {_number(r.statements)} | {_number(r.cpu_ms, 2)} "
            f"| {_number(r.db_cpu_ms, 2)} | {_number(r.others_cpu_pct, 0)}% "
            f"| {_number(r.rss_mib, 0)} "
            f"| {_ratio(r.rps, _reference(floor))} | {_ratio(r.rps, _reference(peer))} |"
        )
    return lines


def parity_notes(firsts: dict[str, dict[str, Any]], scenarios: list[Scenario]) -> list[str]:
    """The floor must answer exactly what the service answers, or it measures something else."""
    notes = []
    ours, floor = firsts.get("ours", {}), firsts.get("floor", {})
    for scenario in scenarios:
        if scenario.writes or scenario.name not in ours or scenario.name not in floor:
            continue
        if ours[scenario.name] == floor[scenario.name]:
            notes.append(f"- {scenario.name}: the floor's response is identical to ours")
        else:
            notes.append(
                f"- {scenario.name}: the floor's response DIFFERS from ours "
                f"(ours: {orjson.dumps(ours[scenario.name])[:200].decode()}...)"
            )
    return notes


def report(
    args: argparse.Namespace,
    machine: list[str],
    results: list[Result],
    checks: list[str],
    parity: list[str],
) -> str:
    scenario_lines = [f"- `{name}`: {SCENARIOS[name].description}" for name in args.scenarios]
    error_lines = [
        f"- {r.target} / {r.scenario}: {r.errors} errors, e.g. `{r.sample[:240]}`"
        for r in results
        if r.errors and r.sample
    ]
    parts = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`"
        + " ".join(["python -m bench", *sys.argv[1:]])
        + "`). A measurement, not a test: numbers move with the machine and its load, so "
        "compare runs made on the same machine, and ratios rather than absolute numbers.",
        "",
        *machine,
        f"- load: wrk, {args.connections} connections, {args.wrk_threads} thread(s), "
        f"{args.warmup:g} s warmup + {args.duration:g} s per scenario; each target started "
        "alone on the same database, once per server process count (one table each)",
        f"- data: {args.users:,} users, {args.products:,} products, {args.orders:,} orders "
        f"(seed {args.seed})",
        "",
        *tables(results),
        "",
        "Columns: *errors* = non-2xx + socket errors + 200 responses carrying GraphQL `errors`; "
        "a run that mostly failed shows its req/s in parentheses and no ratio; "
        "*refused* = `InsufficientStock` answers (data, not errors); *SQL/req* = statements "
        f"PostgreSQL logged per request over {args.count_requests} sequential requests "
        "(transaction control included; from pg_stat_statements on a non-embedded database, n/a "
        "without it); *CPU ms/req* = "
        "user+system CPU of the server's process tree during the run / requests; *DB CPU "
        "ms/req* = the same for PostgreSQL; *others' CPU* = share of the machine's CPU "
        "(all cores) used during the run by anything else than the target, PostgreSQL and wrk: "
        "other jobs on a shared host; when it is high, the row is noisy; *MiB/process* = mean "
        "resident memory of each serving process (gunicorn's or Node's cluster workers) right "
        "after the run; *vs* = req/s ratio within the same table.",
        "",
        "Scenarios:",
        *scenario_lines,
        "",
        "Peers: the floor runs one SQL per request that builds the whole response (token "
        "lookup included) and calls the same PL/pgSQL functions as PostGraphile for writes "
        "(bench/pg_functions.sql: rows locked FOR UPDATE in id order, an outbox row per order). "
        "PostGraphile has no notion of our API tokens: the user is named in its queries, so it "
        "does no authentication work.",
    ]
    if checks:
        parts += ["", "Stock checks after reserveProduct:", *[f"- {c}" for c in checks]]
    if parity:
        parts += ["", "Floor parity (first response compared):", *parity]
    if error_lines:
        parts += ["", "Errors (first sample per run):", *error_lines]
    return "\n".join(parts) + "\n"


def build_context(db: BenchDatabase, args: argparse.Namespace) -> Context:
    rng = random.Random(args.seed)
    product_ids = list(range(1, args.products + 1))
    rng.shuffle(product_ids)
    orderable = products_in_stock(db, at_least=50)
    rng.shuffle(orderable)
    hot = orderable[0]
    return Context(
        seed=args.seed,
        reader_index=2,
        writer_index=3,
        product_ids=product_ids[:5000],
        orderable_ids=[p for p in orderable if p != hot],
        hot_product_id=hot,
    )


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (make bench installs it with apt-get)")
    if "postgraphile" in args.target_list and not targets.POSTGRAPHILE_BIN.exists():
        sys.exit("PostGraphile is not installed: cd bench/postgraphile && npm ci")
    settings = get_settings()
    data_dir = settings.data_dir / "bench"
    db = open_database(args.database_url, data_dir)
    set_statement_logging(db, False)  # in case an interrupted run left it on
    prepare(db, users=args.users, products=args.products, orders=args.orders, seed=args.seed)
    context = build_context(db, args)
    machine = machine_description(db)
    scenarios = [SCENARIOS[name] for name in args.scenarios]
    results: list[Result] = []
    checks: list[str] = []
    firsts: dict[str, dict[str, Any]] = {}
    for workers in args.worker_counts:
        for target in args.target_list:
            target_results, target_firsts, target_checks = bench_target(
                target,
                scenarios,
                db=db,
                context=context,
                args=args,
                log_dir=data_dir / "logs",
                workers=workers,
            )
            firsts.setdefault(target, target_firsts)
            results += target_results
            checks += [f"{workers} worker(s): {check}" for check in target_checks]
    reset_writes(db)
    # Rows by scenario, then target, so the peers of one operation sit together.
    order = {name: i for i, name in enumerate(args.scenarios)}
    results.sort(key=lambda r: (r.workers, order[r.scenario], args.target_list.index(r.target)))
    text = report(args, machine, results, checks, parity_notes(firsts, scenarios))
    print("\n" + text)
    if not args.no_output:
        Path(args.output).write_text(text)
        print(f"written to {args.output}")


if __name__ == "__main__":
    main()
