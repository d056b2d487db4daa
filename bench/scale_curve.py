"""How each cost grows with the data: 100k, 1M (and 10M) structures, Makazi vs raw SQL.

For every size in ``MAKAZI_BENCH_SIZES`` (default ``100000,1000000``; add
``10000000`` once its database is built, see :func:`bench.common.bench_context`)
the same steps run against that size's own database, each beside the raw SQL
that yields the same answer, in the same run:

* **page 50** of a 1,000-item keyset walk and a **CQL2 page** (Makazi over HTTP vs
  the statement writing the same Feature texts, psycopg);
* the densest **zoom-16 tile**, cold (Makazi with its tile cache off, over HTTP, vs
  its own ST_AsMVT statement);
* **impact** of a 5 km corridor through Kibera and **access** to water points over
  all structures (``geo.analysis`` vs the hand-written statements of bench/analysis.py);
* the **whole-layer export** as GeoJSON (HTTP vs reading every Feature text).

The table gives each time, its ratio to raw SQL and its growth per 10x of
structures; a page or a tile should not grow at all (the work is one page),
impact grows with the structures in the corridor and access and the export
with all structures.  The plot is ``bench/scale_curve.png``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import create_engine

from bench.analysis import (
    _ACCESS_TEMPLATE,
    ACCESS_M,
    ACCESS_VARIANTS,
    BUFFER_M,
    RAW_IMPACT,
    corridor,
)
from bench.common import (
    DATABASE,
    HERE,
    BenchContext,
    bench_context,
    makazi_server,
    markdown_table,
    median_time,
)
from bench.features import raw_feature_time
from bench.tiles import _Sql, densest_tile
from geo.analysis.access import access
from geo.analysis.impact import ImpactRequest, impact
from geo.core.auth import create_token
from geo.core.crs import CRS84
from geo.core.db import Database
from geo.core.settings import Settings
from geo.layers.items import feature_sql
from geo.layers.registry import COLLECTIONS
from geo.tiles.render import tile_sql

PLOT = HERE / "scale_curve.png"


def _database(structures: int) -> str:
    """Each size keeps its own database; 1M is the other topics' ``makazi_bench``."""
    return DATABASE if structures == 1_000_000 else f"{DATABASE}_{structures}"


def _http(client: httpx.Client, url: str, params: dict[str, Any] | None = None) -> None:
    response = client.get(url, params=params, headers={"Accept-Encoding": "identity"})
    response.raise_for_status()
    _ = response.content


def _once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _raw_export(conninfo: str) -> None:
    """Every structure's Feature text, read through a server-side cursor."""
    feature = feature_sql(COLLECTIONS["structures"], CRS84)
    with psycopg.connect(conninfo) as conn, conn.cursor(name="export") as cur:
        cur.itersize = 5000
        cur.execute(f"SELECT {feature} FROM structures t WHERE t.deleted_at IS NULL ORDER BY t.id")
        for _row in cur:
            pass


def _export(client: httpx.Client, url: str, token: str) -> None:
    with client.stream(
        "GET", url, params={"format": "geojson"}, headers={"Authorization": f"Bearer {token}"}
    ) as response:
        response.raise_for_status()
        for _chunk in response.iter_raw():
            pass


class _Steps(dict[str, tuple[float, float, float]]):
    """Each step's (Makazi seconds, raw SQL seconds, 1-minute load average at its end),
    printed as soon as it is measured."""

    def add(self, step: str, times: tuple[float, float]) -> None:
        self[step] = (*times, os.getloadavg()[0])
        ours, raw, load = self[step]
        print(
            f"   {step}: {ours * 1000:.1f} ms, raw {raw * 1000:.1f} ms, load {load:.1f}", flush=True
        )


def measure(ctx: BenchContext) -> dict[str, tuple[float, float, float]]:
    """(Makazi seconds, raw SQL seconds, load average) of every step on one database.

    The load average is the 1-minute figure read when the step ends (the
    machine is shared: read each time next to the load it ran under).
    """
    big = ctx.structures >= 5_000_000
    with psycopg.connect(ctx.conninfo) as conn:
        row = conn.execute(
            "SELECT id FROM structures WHERE deleted_at IS NULL ORDER BY id OFFSET 48999 LIMIT 1"
        ).fetchone()
        assert row is not None
        after = row[0]
        tile = densest_tile(conn, 16)
    engine = create_engine(ctx.url, pool_size=2)
    with engine.begin() as sa_conn:
        token = create_token(sa_conn, name=f"bench-scale-{time.time_ns()}", role="admin")
    db = Database(engine)
    settings = Settings(database_url=ctx.url, analysis_timeout_ms=3_600_000)
    out = _Steps()
    items = "/collections/structures/items"
    cql = "use = 'school' AND storeys >= 2"
    with (
        makazi_server(ctx, tile_cache_mb="0", analysis_timeout_ms="3600000") as base,
        httpx.Client(timeout=3600) as client,
    ):

        def page(
            params: dict[str, Any], where: str, sql_params: dict[str, Any]
        ) -> tuple[float, float]:
            ours = median_time(partial(_http, client, base + items, params), repeat=15, warmup=3)
            raw = raw_feature_time(
                ctx.conninfo, where, "ORDER BY t.id LIMIT 1000", sql_params, repeat=15
            )
            return ours, raw

        out.add(
            "page 50 (keyset, 1,000 items)",
            page({"limit": 1000, "after": after}, "t.id > %(after)s", {"after": after}),
        )
        out.add(
            "CQL2 page (1,000 items)",
            page(
                {"filter": cql, "filter-lang": "cql2-text", "limit": 1000},
                "t.use = 'school' AND t.storeys >= 2",
                {},
            ),
        )
        z, x, y = tile
        sql = _Sql(ctx.conninfo)
        try:
            out.add(
                "densest z16 tile, cold",
                (
                    median_time(partial(_http, client, f"{base}/tiles/{z}/{x}/{y}.mvt"), repeat=9),
                    median_time(partial(sql, tile_sql(z), tile), repeat=9),
                ),
            )
        finally:
            sql.close()
        line = corridor()
        request = ImpactRequest(geometry=line, buffer_m=BUFFER_M)
        impact_params = {"g": json.dumps(line), "b": BUFFER_M}

        def raw(statement: str, params: dict[str, Any]) -> None:
            with psycopg.connect(ctx.conninfo) as conn:
                conn.execute("SET statement_timeout = 0")
                conn.execute(statement, params).fetchall()

        out.add(
            "impact (5 km corridor)",
            (
                median_time(
                    lambda: impact(db, request=request, settings=settings, role="admin"), repeat=3
                ),
                median_time(partial(raw, RAW_IMPACT, impact_params), repeat=3),
            ),
        )
        deg = ACCESS_M * 1.01 / (111_320 * math.cos(math.radians(1.4)))
        access_sql = _ACCESS_TEMPLATE.format(
            test=ACCESS_VARIANTS["bbox + ST_DWithin(geography)"], scope=""
        )

        def ours_access() -> None:
            access(
                db,
                facility_type="water_point",
                max_distance_m=ACCESS_M,
                settings=settings,
                role="admin",
            )

        repeat = 1 if big else 3
        out.add(
            "access (all structures)",
            (
                median_time(ours_access, repeat=repeat, warmup=0 if big else 1),
                median_time(
                    partial(raw, access_sql, {"d": ACCESS_M, "deg": deg}),
                    repeat=repeat,
                    warmup=0 if big else 1,
                ),
            ),
        )
        out.add(
            "whole-layer GeoJSON export",
            (
                _once(partial(_export, client, f"{base}/exports/structures", token)),
                _once(partial(_raw_export, ctx.conninfo)),
            ),
        )
    engine.dispose()
    return out


def _plot(sizes: list[int], results: dict[int, dict[str, tuple[float, float, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(results[sizes[0]])
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for index, step in enumerate(steps):
        colour = f"C{index}"
        ax.plot(sizes, [results[n][step][0] for n in sizes], "o-", color=colour, label=step)
        ax.plot(sizes, [results[n][step][1] for n in sizes], "x--", color=colour, alpha=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("structures")
    ax.set_ylabel("seconds (solid: Makazi, dashed: raw SQL)")
    ax.set_title("Makazi cost by data size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def run(ctx: BenchContext) -> str:
    sizes = sorted(
        int(s) for s in os.environ.get("MAKAZI_BENCH_SIZES", "100000,1000000").split(",")
    )
    results: dict[int, dict[str, tuple[float, float, float]]] = {}
    for structures in sizes:
        sized = (
            ctx
            if structures == ctx.structures
            else bench_context(structures, database=_database(structures))
        )
        print(f"-- {structures:,} structures", flush=True)
        results[structures] = measure(sized)
    header = ["step"]
    for n in sizes:
        header += [f"{n:,}: Makazi s", "x raw", "load"]
    header += [f"growth {a:,} to {b:,}" for a, b in itertools.pairwise(sizes)]
    rows: list[list[object]] = []
    for step in results[sizes[0]]:
        row: list[object] = [step]
        for n in sizes:
            ours, raw, load = results[n][step]
            row += [ours, f"{ours / raw:.2f}", f"{load:.1f}"]
        for a, b in itertools.pairwise(sizes):
            factor = (math.log10(b) - math.log10(a)) or 1.0
            growth = (results[b][step][0] / results[a][step][0]) ** (1 / factor)
            raw_growth = (results[b][step][1] / results[a][step][1]) ** (1 / factor)
            row.append(f"{growth:.2f}x (raw {raw_growth:.2f}x)")
        rows.append(row)
    _plot(sizes, results)
    return (
        markdown_table(header, rows) + f"\n\n![cost by size]({Path(PLOT).name})\n\n"
        "Growth is per 10x of structures (Makazi, and raw SQL in brackets); 'x raw' is "
        "Makazi's time over the raw SQL's, measured side by side in the same run; 'load' is the "
        "1-minute load average when the step ended. Each size "
        "has its own database made by geo.demo.bulk (5 settlements up to 1M, about 50 at "
        "10M). The machine was shared with other jobs while this ran."
    )
