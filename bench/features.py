"""OGC API - Features reads: Makazi vs TiPg vs the raw-SQL limit, on 1M structures.

For each query the three are timed side by side in one run (median of 5 after
a warm-up): Makazi's HTTP endpoint, TiPg's equivalent endpoint on the same
tables, and the single SQL statement that yields the same Feature texts,
read with psycopg (the floor any server on this database could reach).
Also: Makazi's peak RSS while streaming the whole 1M-feature layer as GeoJSON.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import psycopg
from sqlalchemy import create_engine

from bench.common import (
    BenchContext,
    makazi_process,
    markdown_table,
    median_time,
    peak_rss_mb,
    tipg_process,
)
from geo.core.auth import create_token
from geo.core.crs import CRS84
from geo.layers.items import feature_sql
from geo.layers.registry import COLLECTIONS

REPEAT = 5


def feature_statement(where: str, order_limit: str) -> str:
    """The SQL that produces the structures' Feature texts, as the items endpoint writes them."""
    feature = feature_sql(COLLECTIONS["structures"], CRS84)
    return (
        f"SELECT {feature} FROM structures t WHERE t.deleted_at IS NULL AND ({where}) {order_limit}"
    )


def raw_feature_time(
    conninfo: str,
    where: str,
    order_limit: str,
    params: dict[str, Any],
    *,
    repeat: int = REPEAT,
) -> float:
    """Median time of the SQL that produces the same Feature texts."""
    sql = feature_statement(where, order_limit)
    with psycopg.connect(conninfo) as conn:

        def run() -> None:
            conn.execute(sql, params).fetchall()

        return median_time(run, repeat=repeat, warmup=5 if repeat > 5 else 1)


def _http(client: httpx.Client, url: str, params: dict[str, Any], *, gzip: bool = False) -> float:
    headers = {"Accept-Encoding": "gzip" if gzip else "identity"}

    def run() -> None:
        response = client.get(url, params=params, headers=headers)
        response.raise_for_status()
        _ = response.content

    return median_time(run, repeat=REPEAT)


def run(ctx: BenchContext) -> str:
    with psycopg.connect(ctx.conninfo) as conn:
        box = conn.execute(
            "SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM (SELECT ST_Expand("
            "ST_Centroid(geom), 0.0012) e FROM settlements ORDER BY id LIMIT 1) x"
        ).fetchone()
        assert box is not None
        after = conn.execute(
            "SELECT id FROM structures WHERE deleted_at IS NULL ORDER BY id OFFSET 48999 LIMIT 1"
        ).fetchone()
        assert after is not None
    engine = create_engine(ctx.url)
    with engine.begin() as sa_conn:
        token = create_token(sa_conn, name="bench-planner", role="planner")
    engine.dispose()
    bbox = ",".join(f"{v:.6f}" for v in box)
    cql = "use = 'school' AND storeys >= 2"
    cases: list[tuple[str, dict[str, Any], dict[str, Any], tuple[str, str, dict[str, Any]]]] = [
        (
            "10,000-feature page",
            {"limit": 10000},
            {"limit": 10000},
            ("true", "ORDER BY t.id LIMIT 10000", {}),
        ),
        (
            "bbox, dense 270 m box",
            {"bbox": bbox, "limit": 10000},
            {"bbox": bbox, "limit": 10000},
            (
                "ST_Intersects(t.geom, ST_MakeEnvelope(%(a)s, %(b)s, %(c)s, %(d)s, 4326))",
                "ORDER BY t.id LIMIT 10000",
                dict(zip("abcd", box, strict=True)),
            ),
        ),
        (
            "page 50 of a 1,000-item walk",
            {"limit": 1000, "after": after[0]},
            {"limit": 1000, "offset": 49000},
            ("t.id > %(after)s", "ORDER BY t.id LIMIT 1000", {"after": after[0]}),
        ),
        (
            "CQL2 filter",
            {"filter": cql, "filter-lang": "cql2-text", "limit": 1000},
            {"filter": cql, "filter-lang": "cql2-text", "limit": 1000},
            ("t.use = 'school' AND t.storeys >= 2", "ORDER BY t.id LIMIT 1000", {}),
        ),
    ]
    rows: list[list[object]] = []
    with (
        makazi_process(ctx) as (ours, proc),
        tipg_process(ctx) as tipg,
        httpx.Client(timeout=300) as client,
    ):
        for name, our_params, tipg_params, (where, order, params) in cases:
            ours_s = _http(client, f"{ours}/collections/structures/items", our_params)
            ours_gzip_s = _http(
                client, f"{ours}/collections/structures/items", our_params, gzip=True
            )
            raw_s = raw_feature_time(ctx.conninfo, where, order, params)
            tipg_s = float("nan")
            if tipg is not None:
                tipg_s = _http(
                    client, f"{tipg[0]}/collections/public.structures/items", tipg_params
                )
            rows.append(
                [
                    name,
                    ours_s * 1000,
                    ours_gzip_s * 1000,
                    tipg_s * 1000,
                    raw_s * 1000,
                    ours_s / raw_s,
                    tipg_s / ours_s,
                ]
            )
            print(rows[-1], flush=True)
        started = time.perf_counter()
        size = 0
        with client.stream(
            "GET",
            f"{ours}/exports/structures",
            params={"format": "geojson"},
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            for chunk in response.iter_raw():
                size += len(chunk)
        export_s = time.perf_counter() - started
        rss = peak_rss_mb(proc.pid)
    table = markdown_table(
        [
            "query",
            "Makazi ms",
            "Makazi gzip ms",
            "TiPg ms",
            "raw SQL ms",
            "Makazi / raw",
            "TiPg / Makazi",
        ],
        rows,
    )
    notes = (
        f"\n\nWhole layer as GeoJSON ({ctx.structures:,} structures, {size / 1e6:,.0f} MB): "
        f"{export_s:.1f} s; Makazi peak RSS over the whole run {rss:.0f} MB.\n"
        "TiPg pages with OFFSET and counts every page; Makazi pages by id and lets PostGIS "
        "write each Feature. 'raw SQL' reads the same Feature texts with psycopg."
    )
    notes += (
        "\nAll columns except 'Makazi gzip' read uncompressed bodies (the same bytes as "
        "the raw SQL); gzip is level 4."
    )
    if not any(row[3] == row[3] for row in rows):
        notes += "\nTiPg could not be installed here, so its column is empty."
    return table + notes
