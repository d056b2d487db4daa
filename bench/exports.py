"""Exports: every format over HTTP, GeoPackage side by side with ogr2ogr, FlatGeobuf's memory.

- Each format of the whole structures layer through ``GET /exports/structures``
  (median of ``MAKAZI_BENCH_EXPORT_REPEAT`` runs, default 3): seconds, size, the
  server's peak RSS and the GDAL worker's peak RSS (sampled from ``/proc``).
- GeoPackage: Makazi (HTTP, worker process) next to ``ogr2ogr -f GPKG out.gpkg
  PG:...`` reading the same columns and rows from PostGIS (GDAL's ``gdal-bin``;
  skipped with a message when ``ogr2ogr`` is not installed): seconds, ratio and
  peak RSS of each.
- ``ST_AsFlatGeobuf`` with and without its spatial index: the PostgreSQL
  backend's peak RSS growth while it aggregates the layer.

The layer size is the bench database's (``MAKAZI_BENCH_STRUCTURES``); run it
small with ``MAKAZI_BENCH_STRUCTURES=20000 python -m bench exports``.
``MAKAZI_BENCH_EXPORT_DATABASE`` names another database of the bench cluster to
export from instead, such as ``makazi_bench_imports`` after a 1,000,000-feature
imports bench (no demo data to generate).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
from sqlalchemy import create_engine

from bench.common import BenchContext, makazi_process, markdown_table, peak_rss_mb
from geo.core.auth import create_token, revoke_token
from geo.core.errors import NotFound
from geo.layers.registry import COLLECTIONS

#: ``MAKAZI_BENCH_EXPORT_FORMATS`` (comma-separated) runs some of them; gpkg is always run.
FORMATS = ["geojson", "csv", "kml", "fgb", "gpkg", "shp"]
SAMPLE_S = 0.02


def _hwm_mb(pid: int) -> float:
    """A process's peak RSS so far (VmHWM), or 0 when it has gone."""
    try:
        return peak_rss_mb(pid)
    except OSError:
        return 0.0


def _children(pid: int, marker: bytes = b"") -> list[int]:
    """Live children of ``pid`` whose command line holds ``marker``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid and marker in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


def _export_workers(pid: int) -> list[int]:
    """Export workers of server ``pid``: children of its multiprocessing fork server."""
    return [w for server in _children(pid, b"forkserver") for w in _children(server)]


@contextmanager
def _peak_of(pids: Callable[[], list[int]]) -> Iterator[list[float]]:
    """Sample the peak RSS of the processes ``pids()`` names while the block runs.

    VmHWM only grows, so the last sample of each process is its peak but for
    what it allocates in its last ``SAMPLE_S`` seconds.  Yields a one-item list
    holding the largest peak in MiB once the block ends.
    """
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for pid in pids():
                peak[0] = max(peak[0], _hwm_mb(pid))
            time.sleep(SAMPLE_S)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


def _export(client: httpx.Client, url: str, fmt: str, headers: dict[str, str]) -> tuple[float, int]:
    started = time.perf_counter()
    size = 0
    identity = {**headers, "Accept-Encoding": "identity"}  # the file's own bytes, no gzip
    with client.stream("GET", url, params={"format": fmt}, headers=identity) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            size += len(chunk)
    return time.perf_counter() - started, size


def _export_sql() -> str:
    """The columns and rows Makazi exports, as one SELECT for ogr2ogr and ST_AsFlatGeobuf."""
    names = ", ".join(p.name for p in COLLECTIONS["structures"].properties)
    return f"SELECT id, {names}, geom FROM structures WHERE deleted_at IS NULL ORDER BY id"


def _ogr2ogr(conninfo: str, out: Path) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of ogr2ogr writing the layer to a GeoPackage 1.2."""
    out.unlink(missing_ok=True)
    argv = [
        "ogr2ogr",
        "-f",
        "GPKG",
        "-dsco",
        "VERSION=1.2",
        "-nln",
        "structures",
        str(out),
        f"PG:{conninfo}",
        "-sql",
        _export_sql(),
    ]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with _peak_of(lambda: [proc.pid] if proc.poll() is None else []) as peak:
        _, err = proc.communicate()
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"ogr2ogr failed: {err.decode(errors='replace')[-500:]}")
    return seconds, peak[0]


def _in_process(ctx: BenchContext, fmt: str) -> float:
    """Seconds of the GDAL write alone, in this process (what the worker does after start-up)."""
    import tempfile

    from geo.exports.gdal import write_file
    from geo.exports.query import ExportRows

    engine = create_engine(ctx.url)
    workdir = Path(tempfile.mkdtemp(dir=ctx.out))
    try:
        started = time.perf_counter()
        with engine.connect() as conn:
            write_file(conn, ExportRows(COLLECTIONS["structures"], None), fmt, workdir)
        return time.perf_counter() - started
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        engine.dispose()


def _fgb_backend(conninfo: str, index: bool) -> tuple[float, float, int]:
    """Seconds, backend peak RSS growth (MiB) and bytes of ST_AsFlatGeobuf over the layer.

    The growth is the aggregate's own memory: the backend has read the same rows
    (and their shared buffers) just before.
    """
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        pid = int(row[0])
        # the same scan first: the shared buffers it touches count in RSS, not the aggregate
        conn.execute(f"SELECT count(*), sum(length(ST_AsBinary(geom))) FROM ({_export_sql()}) q")
        before = _hwm_mb(pid)
        started = time.perf_counter()
        size = conn.execute(
            f"SELECT length(ST_AsFlatGeobuf(q, {str(index).lower()}, 'geom')) "
            f"FROM ({_export_sql()}) q"
        ).fetchone()
        seconds = time.perf_counter() - started
        grown = _hwm_mb(pid) - before
    return seconds, grown, int(size[0]) if size and size[0] is not None else 0


def _other_database(ctx: BenchContext, name: str) -> BenchContext:
    """``ctx`` reading the cluster's database ``name`` (one a bench has filled already)."""
    conninfo = ctx.cluster.conninfo(name)
    with psycopg.connect(conninfo) as conn:
        count = conn.execute("SELECT count(*) FROM structures WHERE deleted_at IS NULL").fetchone()
    return dataclasses.replace(
        ctx,
        url=ctx.cluster.url(name),
        conninfo=conninfo,
        structures=int(count[0]) if count else 0,
    )


def run(ctx: BenchContext) -> str:
    repeat = int(os.environ.get("MAKAZI_BENCH_EXPORT_REPEAT", "3"))
    if os.environ.get("MAKAZI_BENCH_EXPORT_DATABASE"):
        # e.g. the 1,000,000 footprints the imports bench left, instead of loading demo data
        ctx = _other_database(ctx, os.environ["MAKAZI_BENCH_EXPORT_DATABASE"])
    engine = create_engine(ctx.url)
    with engine.begin() as conn:
        with contextlib.suppress(NotFound):  # a previous run's
            revoke_token(conn, name="bench-exports")
        token = create_token(conn, name="bench-exports", role="planner")
    engine.dispose()
    headers = {"Authorization": f"Bearer {token}"}
    rows: list[list[object]] = []
    times: dict[str, float] = {}
    worker_rss: dict[str, float] = {}
    notes: list[str] = []
    with makazi_process(ctx) as (base, proc), httpx.Client(timeout=3600) as client:
        url = f"{base}/exports/structures"
        chosen = os.environ.get("MAKAZI_BENCH_EXPORT_FORMATS", ",".join(FORMATS)).split(",")
        for fmt in [f for f in FORMATS if f in chosen or f == "gpkg"]:
            samples = []
            size = 0
            with _peak_of(lambda: _export_workers(proc.pid)) as peak:
                for _ in range(repeat):
                    seconds, size = _export(client, url, fmt, headers)
                    samples.append(seconds)
            times[fmt] = statistics.median(samples)
            worker_rss[fmt] = peak[0]
            rows.append(
                [
                    fmt,
                    times[fmt],
                    size / 1e6,
                    peak[0] if peak[0] else "-",
                ]
            )
            print(rows[-1], flush=True)
        server_rss = peak_rss_mb(proc.pid)
    table = markdown_table(["format", "seconds", "MB", "GDAL worker peak RSS MiB"], rows)

    peer = ""
    if shutil.which("ogr2ogr") is None:  # installs gdal-bin as root, else says how
        subprocess.run([str(Path(__file__).parents[1] / "scripts" / "system-deps.sh"), "bench"])
    if shutil.which("ogr2ogr") is None:
        notes.append(
            "ogr2ogr is not installed (Debian package gdal-bin; `scripts/system-deps.sh "
            "bench` installs it): no GeoPackage peer figures."
        )
    else:
        version = subprocess.run(["ogr2ogr", "--version"], capture_output=True, text=True)
        runs = [_ogr2ogr(ctx.conninfo, ctx.out / "ogr2ogr-structures.gpkg") for _ in range(repeat)]
        ogr_s = statistics.median(s for s, _ in runs)
        ogr_rss = max(r for _, r in runs)
        _in_process(ctx, "gpkg")  # warm-up: imports
        alone = statistics.median(_in_process(ctx, "gpkg") for _ in range(repeat))
        peer = "\n\n" + markdown_table(
            ["GeoPackage 1.2 of the layer", "seconds", "x ogr2ogr", "peak RSS MiB"],
            [
                [
                    "Makazi GET /exports (worker process, HTTP)",
                    times["gpkg"],
                    times["gpkg"] / ogr_s,
                    worker_rss["gpkg"],
                ],
                ["Makazi write_file alone (warm process)", alone, alone / ogr_s, "-"],
                [f"ogr2ogr -f GPKG PG:... ({version.stdout.strip()})", ogr_s, 1.0, ogr_rss],
            ],
        )
    fgb_rows = []
    for index in (True, False) if "fgb" in times else ():
        seconds, grown, size = _fgb_backend(ctx.conninfo, index)
        fgb_rows.append([f"ST_AsFlatGeobuf(q, {index})", seconds, size / 1e6, grown])
    fgb = (
        "\n\n"
        + markdown_table(
            ["FlatGeobuf in PostgreSQL", "seconds", "MB", "backend memory for it MiB"], fgb_rows
        )
        if fgb_rows
        else ""
    )
    notes.append(
        f"{ctx.structures:,} structures; median of {repeat} runs; the server's peak RSS over "
        f"all exports {server_rss:.0f} MiB (the GDAL work is in its worker processes). "
        "Peak RSS of other processes is sampled from /proc every 20 ms."
    )
    return table + peer + fgb + "\n\n" + "\n".join(f"- {n}" for n in notes)
