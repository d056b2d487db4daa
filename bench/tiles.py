"""Vector tile latency: Makazi (cold and warm cache) vs the raw ST_AsMVT query vs TiPg.

Two tiles over the 1M-structure bench database: the densest zoom-16 tile
(every structure with its attributes) and the densest zoom-14 overview.

* **raw SQL**: the exact statement Makazi runs (``geo.tiles.render.tile_sql``), sent
  with psycopg as a prepared statement; the floor any server over PostGIS can
  reach, with no HTTP, gzip or hashing.
* **Makazi cold**: a server with ``MAKAZI_TILE_CACHE_MB=0``, so every request
  renders the tile (PostgreSQL's own buffers are warm, as for raw SQL).
* **Makazi warm**: the default cache; the tile is served from memory after one
  change-counter query.
* **TiPg**: developmentseed/tipg in its own virtualenv (``bench/out/tipg-venv``),
  on the same database, its ``/collections/public.structures/tiles`` endpoint
  with the same attributes.  TiPg draws one collection per tile, so it is
  compared with raw SQL for the structures layer alone as well.

Targets (issue 7): cold within 1.3x of raw SQL and faster than TiPg; warm at
least 20x faster than cold.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import httpx
import psycopg

from bench.common import (
    BenchContext,
    ensure_tipg,
    makazi_server,
    markdown_table,
    tipg_process,
    tipg_version,
)
from geo.tiles.render import LAYERS, TILE_PLANNER_SQL, extent_at, tile_sql

STRUCTURE_FIELDS = [
    prop for prop, _, _ in next(x for x in LAYERS if x.name == "structures").columns
]


def densest_tile(conn: psycopg.Connection[Any], z: int) -> tuple[int, int, int]:
    """The tile at zoom ``z`` holding the most structure centroids."""
    row = conn.execute(
        "SELECT floor((ST_X(c) + 180) / 360 * 2 ^ %(z)s)::int, "
        "floor((1 - asinh(tan(radians(ST_Y(c)))) / pi()) / 2 * 2 ^ %(z)s)::int "
        "FROM (SELECT ST_Centroid(geom) c FROM structures WHERE deleted_at IS NULL) s "
        "GROUP BY 1, 2 ORDER BY count(*) DESC LIMIT 1",
        {"z": z},
    ).fetchone()
    assert row is not None
    return z, int(row[0]), int(row[1])


def _structures_only_sql() -> str:
    """Raw SQL for the structures layer alone, as TiPg draws it (4096 extent)."""
    cols = ", ".join(STRUCTURE_FIELDS)  # fixed names from geo.tiles.render.LAYERS
    return (
        "SELECT ST_AsMVT(q, 'structures', 4096, 'geom') FROM (SELECT " + cols + ", "
        "ST_AsMVTGeom(ST_Transform(geom, 3857), ST_TileEnvelope(%(z)s, %(x)s, %(y)s), 4096, 64, "
        "true) AS geom FROM structures WHERE deleted_at IS NULL AND geom && "
        "ST_Transform(ST_TileEnvelope(%(z)s, %(x)s, %(y)s), 4326)) q"
    )


class _Sql:
    """A psycopg connection running a tile statement as the service does: prepared, binary."""

    def __init__(self, conninfo: str) -> None:
        self.conn = psycopg.connect(conninfo, autocommit=True)
        self.conn.execute(TILE_PLANNER_SQL.replace(", true)", ", false)"))

    def __call__(self, sql: str, tile: tuple[int, int, int]) -> int:
        z, x, y = tile
        with self.conn.cursor(binary=True) as cursor:
            cursor.execute(sql, {"z": z, "x": x, "y": y}, prepare=True)
            row = cursor.fetchone()
        return len(row[0] or b"") if row else 0

    def close(self) -> None:
        self.conn.close()


def _get(client: httpx.Client, url: str) -> int:
    """GET ``url``; the wire bytes, read as sent (the client's gunzip is not server time)."""
    with client.stream("GET", url) as response:
        size = sum(len(chunk) for chunk in response.iter_raw())
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}")
    return size


def _timed(fn: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    size = fn()
    return time.perf_counter() - start, size


def run(ctx: BenchContext) -> str:
    """Measure and return the Markdown section.

    All contenders run side by side and are timed in turn, round after round,
    so a busy machine slows them alike; each figure is a median.
    """
    with psycopg.connect(ctx.conninfo) as conn:
        dense = densest_tile(conn, 16)
        overview = densest_tile(conn, 14)
    tiles = [("dense z16", dense, 21), ("overview z14", overview, 9)]
    notes: list[str] = []
    python = ensure_tipg()
    tipg_name = "TiPg"
    with contextlib.ExitStack() as stack:
        sql = _Sql(ctx.conninfo)
        stack.callback(sql.close)
        client = stack.enter_context(httpx.Client(timeout=300, headers={"Accept-Encoding": "gzip"}))
        cold_base = stack.enter_context(makazi_server(ctx, tile_cache_mb="0"))
        warm_base = stack.enter_context(makazi_server(ctx))
        tipg_base = None
        if python is None:
            notes.append("TiPg could not be installed into bench/out/tipg-venv: no TiPg figures.")
        else:
            tipg_name = f"TiPg {tipg_version(python)}"
            try:
                served = stack.enter_context(
                    tipg_process(
                        ctx,
                        TIPG_MAX_FEATURES_PER_TILE="1000000",
                        TIPG_DB_TABLES='["public.structures"]',
                    )
                )
                tipg_base = served[0] if served is not None else None
            except RuntimeError as exc:
                notes.append(f"TiPg did not start: {str(exc)[:300]}")

        props = ",".join(STRUCTURE_FIELDS)
        results: dict[tuple[str, str], list[float]] = {}
        sizes: dict[tuple[str, str], int] = {}
        for label, tile, rounds in tiles:
            z, x, y = tile
            path = f"/tiles/{z}/{x}/{y}.mvt"
            full_sql = tile_sql(z)
            contenders: dict[str, Callable[[], int]] = {
                "raw": partial(sql, full_sql, tile),
                "raw-structures": partial(sql, _structures_only_sql(), tile),
                "cold": partial(_get, client, cold_base + path),
                "warm": partial(_get, client, warm_base + path),
                "floor": partial(_get, client, warm_base + "/conformance"),
            }
            if tipg_base is not None:
                url = (
                    f"{tipg_base}/collections/public.structures/tiles/WebMercatorQuad/"
                    f"{z}/{x}/{y}?properties={props}"
                )
                contenders["tipg"] = partial(_get, client, url)
            for fn in contenders.values():  # warm-up: plans, PostgreSQL buffers, cache
                fn()
                fn()
            for _ in range(rounds):
                for name, fn in contenders.items():
                    seconds, size = _timed(fn)
                    results.setdefault((label, name), []).append(seconds)
                    sizes[(label, name)] = size
            # A map view asks for a dozen tiles at once: cache hits back to back.
            for _ in range(20):
                seconds, size = _timed(contenders["warm"])
                results.setdefault((label, "warm-burst"), []).append(seconds)
                sizes[(label, "warm-burst")] = size

    def ms(label: str, name: str) -> float:
        return statistics.median(results[(label, name)]) * 1000

    names = {
        "raw": "raw SQL: Makazi's statement, psycopg (uncompressed)",
        "raw-structures": "raw SQL: structures layer only, extent 4096",
        "cold": "Makazi, cold cache (renders every time)",
        "warm": "Makazi, warm cache",
        "warm-burst": "Makazi, warm cache, 20 requests back to back",
        "floor": "Makazi, GET /conformance (HTTP floor: no database, 1.6 kB)",
        "tipg": f"{tipg_name}: structures only",
    }
    rows: list[list[object]] = []
    for label, _, _ in tiles:
        for name, title in names.items():
            if (label, name) in results:
                rows.append(
                    [
                        label,
                        title,
                        ms(label, name),
                        sizes[(label, name)],
                        f"{ms(label, name) / ms(label, 'raw'):.2f}",
                    ]
                )
    table = markdown_table(["tile", "contender", "median ms", "bytes", "x raw SQL"], rows)
    lines = [
        f"Tiles {dense[0]}/{dense[1]}/{dense[2]} (dense) and {overview[0]}/{overview[1]}/"
        f"{overview[2]} (overview) over {ctx.structures:,} structures; every contender runs "
        "at the same time and is timed in turn, round after round (medians). HTTP bytes are "
        "as sent (gzip), read on one keep-alive connection. Makazi's tile holds all four "
        f"layers (structures at extent {extent_at(16)} at z16, {extent_at(14)} with id and use "
        "at z14); TiPg's holds the structures only, always at extent 4096 with the same "
        "attributes as Makazi's z16 layer.",
        "",
        table,
        "",
        "Ratios:",
    ]
    for label, _, _ in tiles:
        cold, warm, raw = ms(label, "cold"), ms(label, "warm"), ms(label, "raw")
        line = (
            f"- {label}: Makazi cold / raw SQL = {cold / raw:.2f} (target <= 1.3); "
            f"cold / warm = {cold / warm:.0f}x (target >= 20x; "
            f"{cold / ms(label, 'warm-burst'):.0f}x for back-to-back hits; a hit costs "
            f"{warm / ms(label, 'floor'):.1f}x the app's HTTP floor)"
        )
        if (label, "tipg") in results:
            tipg = ms(label, "tipg")
            line += (
                f"; {tipg_name} / Makazi cold = {tipg / cold:.2f}x (target > 1); "
                f"{tipg_name} / raw structures-only SQL = {tipg / ms(label, 'raw-structures'):.2f}x"
            )
        lines.append(line)
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines)
