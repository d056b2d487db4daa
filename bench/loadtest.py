"""``make loadtest`` / ``make soak``: Makazi under many concurrent clients, with Locust.

Loopback only. A server on the bench cluster's ``makazi_load`` database (20,000
demo structures, loaded once) is driven by Locust (``bench/locustfile.py``) for
a fixed time with a fixed number of users, then stops by itself. Printed:
requests, errors, throughput and p50/p95/p99 per kind of request; the
server's resident memory at the start and end (and its peak); and the most
sessions seen ``idle in transaction`` meanwhile. The result goes to
bench/RESULTS.md under "loadtest" (or "soak").

Targets (issue 16), on this 2-core machine: 0 errors and p99 under 500 ms for
items and tiles at 50 users; over a 30-minute soak, flat memory and no session
left idle in a transaction.

Locust was chosen over a hand-written client pool: it is the maintained load
tool Python users know, it writes percentiles per request name, and its
scenarios are plain Python.
"""

from __future__ import annotations

import csv
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from sqlalchemy import create_engine

from app.cli.serve import worker_count
from bench.common import BenchContext, bench_context, markdown_table, write_section
from geo.core.auth import create_token
from geo.core.settings import Settings
from geo.layers.placement import mapped_area
from tests.support.server import makazi_on

HERE = Path(__file__).resolve().parent


def _rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children (uvicorn workers), in MB."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for one in pids:
        status = Path(f"/proc/{one}/status")
        if status.exists():
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def _cpu_s(pid: int) -> float:
    """CPU seconds used by ``pid``, its live children and the children it has reaped."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    ticks = 0
    for one in pids:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        ticks += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _locust_cpu_s() -> float:
    """CPU seconds of this process's reaped children (Locust, once it has ended)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def prepare_load(ctx: BenchContext) -> dict[str, str]:
    """Tokens, the mapped area and the settlements for the Locust users (environment)."""
    engine = create_engine(ctx.url)
    with engine.begin() as conn:
        stamp = str(int(time.time()))
        viewer = create_token(conn, name=f"load-viewer-{stamp}", role="viewer")
        mapper = create_token(conn, name=f"load-mapper-{stamp}", role="mapper")
        bounds = mapped_area(conn, max_km=50) or [36.74, -1.32, 36.9, -1.25]
        settlements = [str(r[0]) for r in conn.exec_driver_sql("SELECT id FROM settlements")]
    engine.dispose()
    return {
        "LOAD_BOUNDS": ",".join(str(v) for v in bounds),
        "LOAD_VIEWER_TOKEN": viewer,
        "LOAD_MAPPER_TOKEN": mapper,
        "LOAD_SETTLEMENTS": ",".join(settlements),
    }


def run_locust(
    base: str, env: dict[str, str], prefix: Path, *, users: int, seconds: int
) -> list[dict[str, str]]:
    """Drive ``base`` with ``bench/locustfile.py``; Locust's rows per request name."""
    Path(f"{prefix}_stats.csv").unlink(missing_ok=True)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(HERE / "locustfile.py"),
            "--headless",
            "--host",
            base,
            "-u",
            str(users),
            "-r",
            str(max(1, users // 5)),
            "--run-time",
            f"{seconds}s",
            "--stop-timeout",
            "5",
            "--csv",
            str(prefix),
            "--only-summary",
            "--loglevel",
            "WARNING",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 120,
    )
    if not Path(f"{prefix}_stats.csv").exists():
        raise RuntimeError(f"locust did not run: {result.stderr[-2000:]}")
    with open(f"{prefix}_stats.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@dataclass(frozen=True)
class Setup:
    """How the server under load runs: uvicorn workers and the answer cache."""

    workers: int
    answer_cache: bool

    @property
    def label(self) -> str:
        cache = "answer cache" if self.answer_cache else "no answer cache"
        return f"{self.workers} worker{'s' if self.workers > 1 else ''}, {cache}"


def default_setup() -> Setup:
    """What ``makazi serve`` runs unless told otherwise (workers per core, cache on)."""
    settings = Settings()
    return Setup(worker_count(None, settings), settings.answer_cache_entries > 0)


BEFORE = Setup(workers=1, answer_cache=False)
"""The setup ``makazi serve`` ran by default before (main at f61d4ee)."""


@dataclass
class Measured:
    """One load run: Locust's rows and what was sampled on the side."""

    setup: Setup
    stats: list[dict[str, str]]
    samples: list[tuple[float, float, int, int]]
    idle_after: int
    load: str
    cpu: dict[str, float]
    """CPU seconds over the measured run: ``locust``, ``server``, ``postgres``."""

    def row(self, name: str) -> dict[str, str]:
        """Locust's row for request ``name`` (empty when it never ran)."""
        return next((r for r in self.stats if r["Name"] == name), {})


def measure(
    ctx: BenchContext,
    env: dict[str, str],
    setup: Setup,
    *,
    users: int,
    seconds: int,
    section: str,
    warm_up_s: int = 0,
) -> Measured:
    """Serve ``ctx`` as ``setup`` and drive it with Locust; RSS and idle sessions sampled."""
    prefix = ctx.out / section
    samples: list[tuple[float, float, int, int]] = []
    with makazi_on(
        ctx.url,
        workers=setup.workers,
        token_failures_per_minute="0",
        answer_cache_entries=str(Settings().answer_cache_entries if setup.answer_cache else 0),
    ) as (base, proc):
        if warm_up_s:
            run_locust(base, env, ctx.out / f"{section}-warm", users=users, seconds=warm_up_s)
        stop = threading.Event()

        def sample() -> None:
            with psycopg.connect(ctx.conninfo, autocommit=True) as conn:
                while not stop.is_set():
                    row = conn.execute(IDLE_IN_TRANSACTION).fetchone()
                    idle, stale = (int(row[0]), int(row[1])) if row else (0, 0)
                    samples.append((time.monotonic(), _rss_mb(proc.pid), idle, stale))
                    stop.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        postmaster = int((ctx.cluster.pgdata / "postmaster.pid").read_text().split()[0])
        before = (_locust_cpu_s(), _cpu_s(proc.pid), _cpu_s(postmaster))
        sampler.start()
        stats = run_locust(base, env, prefix, users=users, seconds=seconds)
        after = (_locust_cpu_s(), _cpu_s(proc.pid), _cpu_s(postmaster))
        cpu = {
            name: end - start
            for name, start, end in zip(
                ("locust", "server", "postgres"), before, after, strict=True
            )
        }
        load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
        stop.set()
        sampler.join(timeout=5)
        time.sleep(2)  # the last answers are sent; nothing should be left open
        with psycopg.connect(ctx.conninfo, autocommit=True) as conn:
            left = conn.execute(IDLE_IN_TRANSACTION).fetchone()
        idle_after = int(left[0]) if left else 0
    return Measured(setup, stats, samples, idle_after, load, cpu)


def run(
    ctx: BenchContext | None = None,
    *,
    users: int = 50,
    seconds: int = 60,
    section: str = "loadtest",
    setup: Setup | None = None,
) -> str:
    """One load run (``makazi serve``'s default setup unless told); the markdown for RESULTS.md."""
    users = int(os.environ.get("MAKAZI_LOAD_USERS", users))
    seconds = int(os.environ.get("MAKAZI_LOAD_SECONDS", seconds))
    ctx = ctx or bench_context(structures=20_000, database="makazi_load")
    env = {**os.environ, **prepare_load(ctx)}
    done = measure(
        ctx, env, setup or default_setup(), users=users, seconds=seconds, section=section
    )
    samples, stats = done.samples, done.stats
    rows: list[list[object]] = [
        [
            stat["Name"],
            f"{int(stat['Request Count']):,}",
            stat["Failure Count"],
            f"{float(stat['Requests/s']):.1f}",
            stat["50%"],
            stat["95%"],
            stat["99%"],
            stat["Max Response Time"].split(".")[0],
        ]
        for stat in stats
    ]
    rss = [s[1] for s in samples] or [0.0]
    idle = max((s[2] for s in samples), default=0)
    stale = max((s[3] for s in samples), default=0)
    table = markdown_table(
        ["request", "count", "errors", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms"], rows
    )
    half = samples[len(samples) // 2 :]
    return (
        f"{users} users for {seconds} s against {ctx.structures:,} demo structures; server: "
        f"**{done.setup.label}**; loopback, Locust on the same 2-core machine (load average "
        f"at the end {done.load} over 1/5/15 min).\n\n{table}\n\n"
        f"Server memory (RSS of all its processes, sampled every second): {rss[0]:.0f} MB at "
        f"the start, {rss[-1]:.0f} MB at the end, {max(rss):.0f} MB at most; trend "
        f"{rss_slope(samples):+.1f} MB/hour over the run, {rss_slope(half):+.1f} MB/hour over "
        f"its second half (after warm-up). Sessions idle in transaction: {done.idle_after} "
        f"after the run, {idle} at most at one moment (between the statements of a request), "
        f"{stale} at most idle in a transaction for more than {STALE_S} s (a leak would show "
        f"here). CPU used over the run: Locust {done.cpu['locust']:.0f} s, the server "
        f"{done.cpu['server']:.0f} s, PostgreSQL {done.cpu['postgres']:.0f} s (the machine "
        f"has {(os.cpu_count() or 1) * seconds} core-seconds in {seconds} s).\n"
    )


COMPARED = (
    BEFORE,
    Setup(workers=1, answer_cache=True),
    Setup(workers=2, answer_cache=False),
    Setup(workers=2, answer_cache=True),
)
"""The setups compared side by side: before, each change alone, both."""


def compare(users: int = 50, seconds: int = 60, rounds: int = 1) -> str:
    """Every setup of :data:`COMPARED` under the same load, in turn, ``rounds`` times.

    Each setup gets 10 s of unmeasured load first (its caches warm, as a server that
    has run a while).  The machine is shared, so only rows of one run compare.
    """
    users = int(os.environ.get("MAKAZI_LOAD_USERS", users))
    seconds = int(os.environ.get("MAKAZI_LOAD_SECONDS", seconds))
    rounds = int(os.environ.get("MAKAZI_LOAD_ROUNDS", rounds))
    ctx = bench_context(structures=20_000, database="makazi_load")
    env = {**os.environ, **prepare_load(ctx)}
    runs = [
        measure(ctx, env, setup, users=users, seconds=seconds, section="compare", warm_up_s=10)
        for _ in range(rounds)
        for setup in COMPARED
    ]

    def p99(done: Measured, name: str) -> str:
        return done.row(name).get("99%", "-")

    rows: list[list[object]] = []
    for done in runs:
        total = done.row("Aggregated")
        rss = [s[1] for s in done.samples] or [0.0]
        rows.append(
            [
                done.setup.label,
                p99(done, "items (bbox page)"),
                p99(done, "tile"),
                p99(done, "summary"),
                p99(done, "analysis access"),
                p99(done, "trace upload"),
                f"{float(total.get('Requests/s', 0)):.1f}",
                total.get("Failure Count", "-"),
                f"{max(rss):.0f}",
                " / ".join(f"{done.cpu[k]:.0f}" for k in ("locust", "server", "postgres")),
                done.load.split(" / ")[0],
            ]
        )
    table = markdown_table(
        [
            "server",
            "items p99 ms",
            "tiles p99 ms",
            "summary p99 ms",
            "access p99 ms",
            "upload p99 ms",
            "req/s",
            "errors",
            "peak RSS MB",
            "CPU s: Locust / server / PostgreSQL",
            "load avg (1 min)",
        ],
        rows,
    )
    return (
        f"{users} users for {seconds} s per setup (after 10 s unmeasured), the full mix "
        f"(tiles, item pages, summaries, access analyses, uploads), {ctx.structures:,} demo "
        "structures, loopback; the setups one after the other in one run, Locust, the "
        f"server and PostgreSQL sharing the 2 cores.\n\n{table}\n"
    )


STALE_S = 10
IDLE_IN_TRANSACTION = (
    "SELECT count(*), count(*) FILTER (WHERE state_change < now() - interval "
    f"'{STALE_S} seconds') FROM pg_stat_activity WHERE application_name = 'makazi' "
    "AND state = 'idle in transaction'"
)
"""Sessions idle in a transaction now, and those idle in one for more than STALE_S."""


def rss_slope(samples: list[tuple[float, float, int, int]]) -> float:
    """Least-squares slope of RSS over time, in MB per hour (0 with fewer than 2 samples)."""
    if len(samples) < 2:
        return 0.0
    times = [s[0] for s in samples]
    rss = [s[1] for s in samples]
    t_mean = sum(times) / len(times)
    r_mean = sum(rss) / len(rss)
    spread = sum((t - t_mean) ** 2 for t in times)
    if spread == 0:
        return 0.0
    slope = sum((t - t_mean) * (r - r_mean) for t, r in zip(times, rss, strict=True)) / spread
    return slope * 3600


def main(argv: list[str]) -> int:
    """``--soak [--minutes N]``: the soak (30 minutes unless told); ``--scaling``: only the
    scaling run; ``--loadtest``: only the load run; ``--compare``: the setups side by side
    (:func:`compare`); else the load and scaling runs."""
    from bench.scaling import scaling_run

    minutes = 30.0
    if "--minutes" in argv:
        minutes = float(argv[argv.index("--minutes") + 1])

    def soak() -> str:
        return run(users=20, seconds=int(minutes * 60), section="soak")

    sections: dict[str, Callable[[], str]]
    if "--soak" in argv:
        sections = {"soak": soak}
    elif "--scaling" in argv:
        sections = {"scaling": scaling_run}
    elif "--loadtest" in argv:
        sections = {"loadtest": run}
    elif "--compare" in argv:
        sections = {"loadtest-setups": compare}
    else:
        sections = {"loadtest": run, "scaling": scaling_run}
    for section, make in sections.items():
        body = make()
        print(body)
        write_section(section, body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
