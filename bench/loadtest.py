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
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from sqlalchemy import create_engine

from bench.common import BenchContext, bench_context, makazi_process, markdown_table, write_section
from geo.core.auth import create_token
from geo.layers.placement import mapped_area

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


def run(
    ctx: BenchContext | None = None,
    *,
    users: int = 50,
    seconds: int = 60,
    section: str = "loadtest",
) -> str:
    """One load run; returns the markdown written to RESULTS.md."""
    users = int(os.environ.get("MAKAZI_LOAD_USERS", users))
    seconds = int(os.environ.get("MAKAZI_LOAD_SECONDS", seconds))
    ctx = ctx or bench_context(structures=20_000, database="makazi_load")
    env = {**os.environ, **prepare_load(ctx)}
    prefix = ctx.out / section
    samples: list[tuple[float, float, int, int]] = []
    with makazi_process(ctx, token_failures_per_minute="0") as (base, proc):
        stop = threading.Event()

        def sample() -> None:
            with psycopg.connect(ctx.conninfo, autocommit=True) as conn:
                while not stop.is_set():
                    row = conn.execute(IDLE_IN_TRANSACTION).fetchone()
                    idle, stale = (int(row[0]), int(row[1])) if row else (0, 0)
                    samples.append((time.monotonic(), _rss_mb(proc.pid), idle, stale))
                    stop.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stats = run_locust(base, env, prefix, users=users, seconds=seconds)
        stop.set()
        sampler.join(timeout=5)
        time.sleep(2)  # the last answers are sent; nothing should be left open
        with psycopg.connect(ctx.conninfo, autocommit=True) as conn:
            left = conn.execute(IDLE_IN_TRANSACTION).fetchone()
        idle_after = int(left[0]) if left else 0
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
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    half = samples[len(samples) // 2 :]
    return (
        f"{users} users for {seconds} s against {ctx.structures:,} demo structures, one uvicorn "
        f"worker, loopback, Locust on the same 2-core machine (load average at the end "
        f"{load} over 1/5/15 min).\n\n{table}\n\n"
        f"Server memory (RSS, sampled every second): {rss[0]:.0f} MB at the start, "
        f"{rss[-1]:.0f} MB at the end, {max(rss):.0f} MB at most; trend "
        f"{rss_slope(samples):+.1f} MB/hour over the run, {rss_slope(half):+.1f} MB/hour over "
        f"its second half (after warm-up). Sessions idle in transaction: {idle_after} after "
        f"the run, {idle} at most at one moment (between the statements of a request), "
        f"{stale} at most idle in a transaction for more than {STALE_S} s (a leak would show "
        "here).\n"
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
    scaling run; ``--loadtest``: only the load run; else the load and scaling runs."""
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
    else:
        sections = {"loadtest": run, "scaling": scaling_run}
    for section, make in sections.items():
        body = make()
        print(body)
        write_section(section, body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
