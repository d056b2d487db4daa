"""Shared benchmark plumbing: the 1M-structure database, timing, servers, results."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from geo.core.cluster import EmbeddedCluster, ensure_postgis
from geo.core.db import migrate
from tests.support.server import free_port, makazi_on, running_server, uvicorn_argv

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
RESULTS = HERE / "RESULTS.md"
DATABASE = "makazi_bench"
#: The context database of topics that do not read the demo structures.
EMPTY_DATABASE = "makazi_bench_empty"


@dataclass
class BenchContext:
    """What every benchmark topic gets: the database and where to put things."""

    cluster: EmbeddedCluster
    url: str
    conninfo: str
    structures: int
    out: Path


def bench_context(
    structures: int | None = None, database: str = DATABASE, data_dir: Path | None = None
) -> BenchContext:
    """Start the bench cluster (``bench/out/data``, or ``data_dir``) and fill ``database``
    with demo data once.

    ``MAKAZI_BENCH_STRUCTURES`` (default 1,000,000) sets the size; the data comes from
    :func:`geo.demo.bulk.load_bulk` (streamed, flat memory, so 10M fits). ``structures=0``
    leaves ``database`` without demo data (topics that build their own databases).
    """
    if structures is None:
        structures = int(os.environ.get("MAKAZI_BENCH_STRUCTURES", "1000000"))
    wanted = structures
    ensure_postgis(install=os.geteuid() == 0, quiet=True)
    OUT.mkdir(parents=True, exist_ok=True)
    cluster = EmbeddedCluster(data_dir or OUT / "data")
    cluster.start()
    url = cluster.create_database(database)
    migrate(url)
    conninfo = cluster.conninfo(database)
    with psycopg.connect(conninfo) as conn:
        count = conn.execute("SELECT count(*) FROM structures").fetchone()
        have = int(count[0]) if count else 0
    if have != wanted:
        print(f"loading {wanted:,} demo structures (once; kept in bench/out/data)...", flush=True)
        url = cluster.create_database(database, drop=True)
        migrate(url)
        from sqlalchemy import create_engine

        from geo.demo.bulk import load_bulk

        engine = create_engine(url)
        started = time.perf_counter()
        with engine.begin() as conn:
            load_bulk(conn, wanted, seed=7)
        engine.dispose()
        print(
            f"loaded in {time.perf_counter() - started:.0f} s; generator peak RSS "
            f"{own_peak_rss_mb():.0f} MB",
            flush=True,
        )
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
    return BenchContext(cluster=cluster, url=url, conninfo=conninfo, structures=wanted, out=OUT)


def median_time(fn: Callable[[], object], *, repeat: int = 7, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


@contextlib.contextmanager
def makazi_process(
    ctx: BenchContext, **settings: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """This service against the bench database: (base URL, process)."""
    with makazi_on(ctx.url, **settings) as served:
        yield served


@contextlib.contextmanager
def makazi_server(ctx: BenchContext, **settings: str) -> Iterator[str]:
    """This service against the bench database; yields its base URL."""
    with makazi_on(ctx.url, **settings) as (url, _proc):
        yield url


TIPG_VENV = OUT / "tipg-venv"


def ensure_tipg() -> str | None:
    """The TiPg venv's python, installing TiPg there once; None when it cannot be installed."""
    python = TIPG_VENV / "bin" / "python"
    if python.exists():
        check = subprocess.run([str(python), "-c", "import tipg, uvicorn"], capture_output=True)
        if check.returncode == 0:
            return str(python)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(TIPG_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "tipg", "uvicorn"],
            check=True,
            capture_output=True,
        )
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"TiPg could not be installed: {exc}", file=sys.stderr)
        return None
    return str(python)


def tipg_version(python: str) -> str:
    """The installed TiPg's version string."""
    out = subprocess.run(
        [python, "-c", "import tipg; print(tipg.__version__)"], capture_output=True, text=True
    )
    return out.stdout.strip() or "?"


@contextlib.contextmanager
def tipg_process(
    ctx: BenchContext, **tipg_settings: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]] | None]:
    """TiPg serving the bench database: (base URL, process), or None if not installable.

    ``tipg_settings`` are extra ``TIPG_*`` variables; raises RuntimeError if it
    does not start.
    """
    python = ensure_tipg()
    if python is None:
        yield None
        return
    port = free_port()
    env = {
        "DATABASE_URL": ctx.url.replace("postgresql+psycopg://", "postgresql://"),
        "TIPG_DB_SCHEMAS": '["public"]',
        "TIPG_MAX_FEATURES_PER_QUERY": "10000",
        **tipg_settings,
    }
    argv = uvicorn_argv(python, "tipg.main:app", port)
    with running_server(argv, port, env, health="/collections") as proc:
        yield f"http://127.0.0.1:{port}", proc


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a live process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def own_peak_rss_mb() -> float:
    """Peak resident memory of this process, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub Markdown table."""

    def fmt(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line() -> str:
    """One line naming the machine and versions, for RESULTS.md."""
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.platform()}"
    )


def write_section(topic: str, body: str) -> None:
    """Replace the ``## topic`` section of bench/RESULTS.md with ``body``."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    marker = f"\n## {topic}\n"
    if marker in text:
        start = text.index(marker)
        nxt = text.find("\n## ", start + len(marker))
        text = text[:start] + (text[nxt:] if nxt != -1 else "")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = text.rstrip() + f"\n{marker}\n_{stamp}; {machine_line()}_\n\n{body.strip()}\n"
    RESULTS.write_text(text)
