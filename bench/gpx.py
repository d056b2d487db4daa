"""GPX ingest through HTTP, as a phone app or ``makazi trace upload`` sends it.

Two workloads on generated phone walks (:mod:`geo.demo.walks`: GPS noise of a
few metres, turns, pauses with repeated fixes, duplicate fixes and shared
timestamps, rare speed spikes and poor fixes; elevation, time and hdop on
every point):

* one file of 1,000,000 track points (about 116 MB of XML);
* 1,000 files of 200 points each (a day of phone uploads), sent one after
  another.

"makazi" is ``POST /traces`` to a real uvicorn server on the bench database
(body spooled, parsed, cleaned, stored with lines and geodesic length,
committed; the answer read), timed at the client.  Side by side in the same
run: gpxpy's parse of the same bytes (nothing stored), the parse limit (lxml
``iterparse`` of the same bytes, each point's attributes and children read,
elements cleared) and the storing limit (``COPY`` of ready rows into
``trace_points``).

Each server is fresh per workload, warmed with 50 other small uploads
(statements prepared, the trace tables analyzed as autovacuum keeps them on a
live server); its peak RSS (``VmHWM``) is reported.  The parsers run in fresh
processes, so their peak RSS is their own.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import create_engine, text

from bench.common import BenchContext, makazi_process, markdown_table
from geo.core.auth import create_token, revoke_token
from geo.core.errors import NotFound
from geo.demo.walks import gpx_bytes, phone_walk

OWNER = "bench-gpx"
WARMUP_OWNER = "bench-gpx-warmup"
WARMUP_FILES = 50
#: ``MAKAZI_BENCH_GPX_POINTS`` / ``MAKAZI_BENCH_GPX_FILES`` make a shorter run on a shared machine.
BIG_POINTS = int(os.environ.get("MAKAZI_BENCH_GPX_POINTS", "1000000"))
SMALL_FILES = int(os.environ.get("MAKAZI_BENCH_GPX_FILES", "1000"))
SMALL_POINTS = 200


def make_files(out: Path) -> tuple[Path, list[Path], list[Path]]:
    """The 1M-point walk, the 1,000 small walks and the warm-up walks (generated once)."""
    folder = out / "gpx-walks"
    folder.mkdir(parents=True, exist_ok=True)
    big = folder / ("million.gpx" if BIG_POINTS == 1_000_000 else f"walk-{BIG_POINTS}.gpx")
    if not big.exists():
        big.write_bytes(gpx_bytes(phone_walk(BIG_POINTS, seed=1)))
    total = max(SMALL_FILES, 1_000)
    small = [folder / f"small-{i:04d}.gpx" for i in range(total + WARMUP_FILES)]
    for i, path in enumerate(small):
        if not path.exists():
            path.write_bytes(gpx_bytes(phone_walk(SMALL_POINTS, seed=100 + i)))
    return big, small[:SMALL_FILES], small[total:]


def _peak_mb() -> float:
    """This process's peak RSS (VmHWM; ``ru_maxrss`` survives ``exec``)."""
    return _rss_mb(os.getpid(), "VmHWM")


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


def _lxml_worker(paths: list[str]) -> dict[str, float]:
    """The parse limit: iterparse, read each point's attributes and children, clear."""
    from lxml import etree

    tag = "{http://www.topografix.com/GPX/1/1}trkpt"
    start = time.perf_counter()
    points = 0
    for path in paths:
        for _, element in etree.iterparse(path, events=("end",), tag=tag):
            element.get("lat"), element.get("lon")
            for child in element:
                child.text  # noqa: B018
            points += 1
            element.clear(keep_tail=False)
            while element.getprevious() is not None:
                del element.getparent()[0]
    return {"seconds": time.perf_counter() - start, "points": points, "rss_mb": _peak_mb()}


def _raw_copy_worker(conninfo: str, n: int) -> dict[str, float]:
    """The storing limit: COPY of ``n`` ready rows into trace_points (rolled back)."""
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


def _tokens(url: str) -> dict[str, str]:
    engine = create_engine(url)
    tokens = {}
    with engine.begin() as conn:
        for name in (OWNER, WARMUP_OWNER):
            with contextlib.suppress(NotFound):  # a previous run's
                revoke_token(conn, name=name)
            tokens[name] = create_token(conn, name=name, role="mapper")
    engine.dispose()
    return tokens


def _upload(client: httpx.Client, base: str, token: str, path: Path) -> int:
    with path.open("rb") as handle:
        response = client.post(
            f"{base}/traces",
            content=handle,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/gpx+xml",
            },
        )
    if response.status_code != 201:
        raise RuntimeError(f"{path.name}: {response.status_code} {response.text[:300]}")
    return int(response.json()["stats"]["points"])


def _makazi_http(
    ctx: BenchContext, paths: list[Path], warmup: list[Path], **settings: str
) -> dict[str, float]:
    tokens = _tokens(ctx.url)
    with (
        makazi_process(ctx, max_upload_mb="200", **settings) as (base, proc),
        httpx.Client(timeout=3600) as client,
    ):
        for path in warmup:
            _upload(client, base, tokens[WARMUP_OWNER], path)
        engine = create_engine(ctx.url)
        with engine.begin() as conn:
            conn.execute(text("ANALYZE traces, trace_segments, trace_points, trace_files"))
        engine.dispose()
        before = _rss_mb(proc.pid, "VmRSS")
        start = time.perf_counter()
        points = sum(_upload(client, base, tokens[OWNER], path) for path in paths)
        seconds = time.perf_counter() - start
        rss = _rss_mb(proc.pid, "VmHWM")
    return {"seconds": seconds, "points": points, "rss_mb": rss, "rss_before_mb": before}


def _rss_mb(pid: int, field: str) -> float:
    """``field`` (VmRSS, VmHWM) of a live process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(ctx: BenchContext) -> str:
    """Markdown: points/s and peak RSS for both workloads, ratios to gpxpy and the limits."""
    big, small, warmup = make_files(ctx.out)
    rows: list[list[object]] = []
    notes = []
    for label, paths in (
        (f"1 file, {BIG_POINTS:,} points ({big.stat().st_size / 1e6:.0f} MB)", [big]),
        (f"{SMALL_FILES:,} files x {SMALL_POINTS} points", small),
    ):
        names = [str(p) for p in paths]
        _cleanup(ctx.conninfo)
        ours = _makazi_http(ctx, paths, warmup)
        _cleanup(ctx.conninfo)
        theirs = _in_process(_gpxpy_worker, names, [str(p) for p in warmup])
        parse = _in_process(_lxml_worker, names)
        copy = _in_process(_raw_copy_worker, ctx.conninfo, int(ours["points"]))
        for who, result in (
            ("makazi POST /traces (parse+clean+store), server RSS", ours),
            ("gpxpy parse only", theirs),
            ("limit: lxml iterparse of the same bytes", parse),
            ("limit: COPY of the kept points as ready rows", copy),
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
        notes.append(
            f"- {label}: makazi through HTTP is **{theirs['seconds'] / ours['seconds']:.2f}x** "
            f"gpxpy's parse-only speed; it takes {ours['seconds'] / parse['seconds']:.1f}x "
            f"the lxml parse and {ours['seconds'] / copy['seconds']:.1f}x the COPY limit "
            f"({ours['seconds'] / (parse['seconds'] + copy['seconds']):.2f}x their sum); "
            f"the server held {ours['rss_before_mb']:.0f} MB before it (warmed up) and "
            f"peaked at {ours['rss_mb']:.0f} MB"
        )
    table = markdown_table(
        ["workload", "what", "points (kept)", "seconds", "points/s", "peak RSS MB"], rows
    )
    return "\n".join(
        [
            "GPX uploads through HTTP (`POST /traces`, one client, files sent one after "
            "another) on generated phone walks (`geo/demo/walks.py`), against gpxpy parsing "
            "the same bytes and the parse and storing limits, in one run.",
            "",
            table,
            "",
            *notes,
        ]
    )


if __name__ == "__main__":
    from bench.common import bench_context

    print(run(bench_context()))
