"""GPX ingest: makazi parse + clean + store vs gpxpy's parse alone.

Two workloads, each run in a fresh process so peak RSS belongs to it alone:

* one generated file of 1,000,000 track points (time and elevation on each,
  about 100 MB of XML);
* 1,000 small files of 200 points each (a day of phone uploads).

"makazi ingest" is :func:`geo.traces.ingest.ingest_trace` into the bench database
(parse, clean, store rows, lines and geodesic length in PostGIS, commit;
one transaction per file), "gpxpy parse" is ``gpxpy.parse`` of the same
bytes with nothing stored.  The "raw SQL" row is the floor for storing:
``COPY`` of pre-made rows into ``trace_points`` with no parsing at all.

Both sides are timed in steady state: each worker first handles the same
50 small files untimed (gpxpy imported and warm; makazi's connection open,
statements prepared, and the trace tables analyzed, as autovacuum keeps them
on a live server).  Between runs the bench's traces are deleted and the
tables vacuumed.  Peak RSS is the worker's own ``VmHWM`` (``ru_maxrss``
would carry over the parent's peak across ``exec``).
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from pathlib import Path
from typing import Any

from bench.common import BenchContext, markdown_table

OWNER = "bench-gpx"
WARMUP_OWNER = "bench-gpx-warmup"
WARMUP_FILES = 50
BIG_POINTS = 1_000_000
SMALL_FILES = 1_000
SMALL_POINTS = 200


def _track(n: int, offset: int = 0) -> bytes:
    rows = []
    for i in range(n):
        s = offset + i
        rows.append(
            b'<trkpt lat="%.7f" lon="%.7f"><ele>%.1f</ele><time>2024-05-%02dT%02d:%02d:%02dZ</time>'
            b"</trkpt>\n"
            % (
                -1.31 + (i % 5000) * 2e-6,
                36.78 + (i // 5000) * 2e-6,
                1700 + i % 50,
                1 + s // 86400 % 28,
                s // 3600 % 24,
                s // 60 % 60,
                s % 60,
            )
        )
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<gpx version="1.1" creator="bench" '
        b'xmlns="http://www.topografix.com/GPX/1/1"><trk><trkseg>\n'
        + b"".join(rows)
        + b"</trkseg></trk></gpx>\n"
    )


def make_files(out: Path) -> tuple[Path, list[Path]]:
    """The 1M-point file and the 1,000 small files (generated once)."""
    folder = out / "gpx"
    folder.mkdir(parents=True, exist_ok=True)
    big = folder / "million.gpx"
    if not big.exists():
        big.write_bytes(_track(BIG_POINTS))
    small = [folder / f"small-{i:04d}.gpx" for i in range(SMALL_FILES)]
    for i, path in enumerate(small):
        if not path.exists():
            path.write_bytes(_track(SMALL_POINTS, offset=i * 1000))
    return big, small


def _peak_mb() -> float:
    """This process's peak RSS (VmHWM).

    Not ``ru_maxrss``: on Linux it survives ``exec``, so a spawned worker would
    report its parent's peak whenever that is larger.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _gpxpy_worker(paths: list[str], warmup: list[str]) -> dict[str, float]:
    import gpxpy

    for path in warmup:
        gpxpy.parse(Path(path).read_bytes())
    start = time.perf_counter()
    points = 0
    for path in paths:
        parsed = gpxpy.parse(Path(path).read_bytes())
        points += sum(len(s.points) for t in parsed.tracks for s in t.segments)
    return {"seconds": time.perf_counter() - start, "points": points, "rss_mb": _peak_mb()}


def _makazi_worker(url: str, paths: list[str], warmup: list[str]) -> dict[str, float]:
    import json

    from sqlalchemy import text

    from geo.core.db import Database, make_engine
    from geo.core.settings import Settings
    from geo.core.uploads import spool_stream
    from geo.traces.ingest import TraceLimits, ingest_trace

    settings = Settings(database_url=url, max_upload_mb=200)
    db = Database(make_engine(url, settings, pool_size=1))
    limits = TraceLimits.from_settings(settings)

    def ingest(path: str, owner: str) -> int:
        with open(path, "rb") as handle:
            body = spool_stream(handle, limit=settings.max_upload_bytes)
        with db.begin(owner) as conn:
            result = ingest_trace(
                conn,
                owner=owner,
                body=body,
                name=Path(path).name,
                visibility="private",
                settlement_id=None,
                limits=limits,
            )
        body.close()
        return int(json.loads(result.body)["stats"]["points"])

    # Steady state, as on a live server: the connection open, statements prepared,
    # and the trace tables analyzed (autovacuum would have; a burst of uploads into
    # tables it last saw empty otherwise checks every point's foreign key by a
    # sequential scan of a growing table).
    for path in warmup:
        ingest(path, WARMUP_OWNER)
    with db.begin() as conn:
        conn.execute(text("ANALYZE traces, trace_segments, trace_points, trace_files"))
    start = time.perf_counter()
    points = 0
    for path in paths:
        points += ingest(path, OWNER)
    seconds = time.perf_counter() - start
    db.dispose()
    return {"seconds": seconds, "points": points, "rss_mb": _peak_mb()}


def _raw_copy_worker(conninfo: str, n: int) -> dict[str, float]:
    import psycopg

    start = time.perf_counter()
    with psycopg.connect(conninfo) as conn:
        conn.execute("SET LOCAL makazi.audit = 'off'")
        trace_id = conn.execute(
            "INSERT INTO traces (name, owner, content_sha256) VALUES ('raw', %s, 'raw') "
            "RETURNING id",
            (OWNER + "-raw",),
        ).fetchone()[0]  # type: ignore[index]
        with conn.cursor().copy(
            "COPY trace_points (trace_id, kind, seq, track, segment, geom, ele, time) FROM STDIN"
        ) as copy:
            for i in range(n):
                copy.write_row(
                    (trace_id, "trkpt", i, 0, 0, "SRID=4326;POINT(36.78 -1.31)", 1700.0,
                     "2024-05-01T08:00:00Z")
                )  # fmt: skip
        conn.rollback()
    return {"seconds": time.perf_counter() - start, "points": n, "rss_mb": _peak_mb()}


def _in_process(target: Any, *args: Any) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        result: dict[str, float] = pool.apply(target, args)
    return result


def _cleanup(conninfo: str) -> None:
    import psycopg

    with psycopg.connect(conninfo) as conn:
        conn.execute("SET makazi.audit = 'off'")
        owners = [OWNER, WARMUP_OWNER]
        ids = [r[0] for r in conn.execute("SELECT id FROM traces WHERE owner = ANY(%s)", (owners,))]
        conn.execute("DELETE FROM traces WHERE owner = ANY(%s)", (owners,))
        conn.execute(
            "DELETE FROM feature_history WHERE collection = 'traces' AND feature_id = ANY(%s)",
            (ids,),
        )
    # Every run stores the same files again: without a vacuum the previous run's
    # dead rows (same owner and hash) slow its duplicate look-ups and unique checks.
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("VACUUM traces, trace_files, trace_segments, trace_points")


def run(ctx: BenchContext) -> str:
    """Markdown: points/s and peak RSS for both workloads, and the ratio to gpxpy."""
    big, small = make_files(ctx.out)
    rows: list[list[object]] = []
    ratios = []
    for label, paths in (
        (f"1 file, {BIG_POINTS:,} points ({big.stat().st_size / 1e6:.0f} MB)", [str(big)]),
        (f"{SMALL_FILES:,} files x {SMALL_POINTS} points", [str(p) for p in small]),
    ):
        warmup = [str(p) for p in small[:WARMUP_FILES]]
        _cleanup(ctx.conninfo)
        ours = _in_process(_makazi_worker, ctx.url, paths, warmup)
        _cleanup(ctx.conninfo)
        theirs = _in_process(_gpxpy_worker, paths, warmup)
        floor = _in_process(_raw_copy_worker, ctx.conninfo, int(ours["points"]))
        ratio = theirs["seconds"] / ours["seconds"]
        ratios.append((label, ratio))
        for who, result in (
            ("makazi ingest (parse+clean+store)", ours),
            ("gpxpy parse only", theirs),
            ("raw SQL COPY of ready rows", floor),
        ):
            rows.append(
                [
                    label,
                    who,
                    f"{result['points']:,.0f}",
                    round(result["seconds"], 2),
                    f"{result['points'] / result['seconds']:,.0f}",
                    round(result["rss_mb"], 1),
                ]
            )
    table = markdown_table(
        ["workload", "what", "points", "seconds", "points/s", "peak RSS MB"], rows
    )
    lines = [
        "GPX ingest into PostGIS vs parsing the same bytes with gpxpy (no storing). "
        "Each run in a fresh process; peak RSS is that process's.",
        "",
        table,
        "",
    ]
    for label, ratio in ratios:
        lines.append(f"- {label}: makazi ingest is **{ratio:.2f}x** gpxpy's parse-only speed")
    return "\n".join(lines)


if __name__ == "__main__":
    from bench.common import bench_context

    print(run(bench_context()))
