"""Planner analyses against the raw-SQL limit and the geopandas notebook route.

Two questions over the 1,000,000-structure demo database:

* **impact**: a 5 km road corridor with a 30 m buffer through Kibera (demo):
  structures, households and people taken, per settlement;
* **access**: structures more than 100 m from a water point that is not broken,
  over all structures.

Each is timed four ways: Makazi's ``geo.analysis`` function (what the API and
CLI run, including privacy and JSON assembly), the same over HTTP, a
hand-written single SQL statement run with psycopg (the limit), and geopandas
doing the same in memory after loading the tables from PostGIS (what a
planner would do in a notebook; its load time is counted).  For access, the
distance-test variants we considered are measured too.
"""

from __future__ import annotations

import json
import math
import time
from functools import partial
from typing import Any

import psycopg
import shapely
import shapely.geometry
from pyproj import Transformer
from sqlalchemy import create_engine

from bench.common import BenchContext, makazi_server, markdown_table, median_time
from geo.analysis import access as access_module
from geo.analysis import impact as impact_module
from geo.analysis.access import access
from geo.analysis.impact import ImpactRequest, impact
from geo.core.auth import create_token
from geo.core.db import Database
from geo.core.settings import Settings

CENTRE = (36.7870, -1.3130)  # Kibera (demo)
LENGTH_M = 5_000.0
BEARING_DEG = 30.0
BUFFER_M = 30.0
ACCESS_M = 100.0


def corridor() -> dict[str, Any]:
    """A straight 5 km line through the centre of Kibera (demo), as GeoJSON lon/lat."""
    to_utm = Transformer.from_crs(4326, 32737, always_xy=True)
    to_lonlat = Transformer.from_crs(32737, 4326, always_xy=True)
    x, y = to_utm.transform(*CENTRE)
    dx = math.sin(math.radians(BEARING_DEG)) * LENGTH_M / 2
    dy = math.cos(math.radians(BEARING_DEG)) * LENGTH_M / 2
    ends = [to_lonlat.transform(x - dx, y - dy), to_lonlat.transform(x + dx, y + dy)]
    return {"type": "LineString", "coordinates": [list(p) for p in ends]}


RAW_IMPACT = """
WITH zone AS (
    SELECT ST_Transform(ST_Buffer(ST_Transform(ST_GeomFromGeoJSON(%(g)s), 32737), %(b)s),
                        4326) AS geom
)
SELECT t.settlement_id, count(*), sum(h.n), sum(h.people)
FROM zone z
JOIN structures t ON t.deleted_at IS NULL AND ST_Intersects(t.geom, z.geom)
CROSS JOIN LATERAL (
    SELECT count(*) AS n, coalesce(sum(members), 0) AS people
    FROM households h WHERE h.structure_id = t.id AND h.deleted_at IS NULL
) h
GROUP BY t.settlement_id
"""

_ACCESS_TEMPLATE = """
SELECT count(*) FILTER (WHERE NOT EXISTS (
           SELECT 1 FROM facilities f
           WHERE f.deleted_at IS NULL AND f.type = 'water_point'
             AND f.condition IS DISTINCT FROM 'broken'
             AND {test})),
       count(*)
FROM structures t
WHERE t.deleted_at IS NULL {scope}
"""
_BOX = "f.geom && ST_Expand(t.geom, %(deg)s)"
ACCESS_VARIANTS = {
    "bbox + ST_DWithin(geography)": _BOX
    + " AND ST_DWithin(f.geom::geography, t.geom::geography, %(d)s)",
    "bbox + ST_DWithin in EPSG:32737": _BOX
    + " AND ST_DWithin(ST_Transform(f.geom, 32737), ST_Transform(t.geom, 32737), %(d)s)",
}
ACCESS_KNN = """
SELECT count(*) FILTER (WHERE coalesce((
           SELECT ST_Distance(c.geom::geography, t.geom::geography)
           FROM (SELECT f.geom FROM facilities f
                 WHERE f.deleted_at IS NULL AND f.type = 'water_point'
                   AND f.condition IS DISTINCT FROM 'broken'
                 ORDER BY f.geom <-> t.geom LIMIT 8) c
           ORDER BY 1 LIMIT 1), 'infinity') > %(d)s),
       count(*)
FROM structures t
WHERE t.deleted_at IS NULL {scope}
"""


def _raw(conninfo: str, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    with psycopg.connect(conninfo) as conn:
        conn.execute("SET statement_timeout = 0")
        return conn.execute(sql, params).fetchall()


def _statement_only(engine: Any, statement: Any, params: dict[str, Any]) -> None:
    """Makazi's own SQL statement, executed without the Python layer around it."""
    with engine.connect() as conn:
        conn.execute(statement, params).scalar_one()


def _geopandas_load(url: str) -> tuple[Any, Any, Any, float]:
    import geopandas as gpd
    import pandas as pd

    engine = create_engine(url)
    start = time.perf_counter()
    with engine.connect() as conn:
        structures = gpd.read_postgis(
            "SELECT id, settlement_id, geom FROM structures WHERE deleted_at IS NULL",
            conn,
            geom_col="geom",
        )
        households = pd.read_sql(
            "SELECT structure_id, members FROM households WHERE deleted_at IS NULL", conn
        )
        facilities = gpd.read_postgis(
            "SELECT id, type, condition, geom FROM facilities WHERE deleted_at IS NULL",
            conn,
            geom_col="geom",
        )
    engine.dispose()
    return structures, households, facilities, time.perf_counter() - start


def _geopandas_impact(structures: Any, households: Any, line: dict[str, Any]) -> tuple[int, int]:
    import geopandas as gpd
    from shapely.geometry import shape

    zone = gpd.GeoSeries([shape(line)], crs=4326).to_crs(32737).buffer(BUFFER_M).to_crs(4326)
    hits = structures.sindex.query(zone.iloc[0], predicate="intersects")
    taken = structures.iloc[hits]
    joined = households[households.structure_id.isin(taken.id)]
    return len(taken), int(joined.members.sum())


def _geopandas_access(structures: Any, facilities: Any) -> int:
    # facilities["type"], not facilities.type: the latter is GeoPandas' geometry type
    wanted = (facilities["type"] == "water_point") & (facilities["condition"] != "broken")
    usable = facilities[wanted]
    utm = structures.geometry.to_crs(32737)
    points = usable.geometry.to_crs(32737)
    pairs = utm.sindex.query(points, predicate="dwithin", distance=ACCESS_M)
    return len(structures) - len(set(pairs[1].tolist()))


def run(ctx: BenchContext) -> str:
    """Time both analyses four ways and return the Markdown section."""
    settings = Settings(database_url=ctx.url, analysis_timeout_ms=600_000)
    engine = create_engine(ctx.url, pool_size=2)
    db = Database(engine)
    line = corridor()
    request = ImpactRequest(geometry=line, buffer_m=BUFFER_M)
    rows: list[list[object]] = []
    notes: list[str] = []

    # ------------------------------------------------------------------ impact
    ours = impact(db, request=request, settings=settings, role="admin")
    t_ours = median_time(lambda: impact(db, request=request, settings=settings, role="admin"))
    params = {"g": json.dumps(line), "b": BUFFER_M}
    raw = _raw(ctx.conninfo, RAW_IMPACT, params)
    t_raw = median_time(lambda: _raw(ctx.conninfo, RAW_IMPACT, params))
    raw_structures = sum(int(r[1]) for r in raw)
    wkb_params = {
        "wkb": shapely.to_wkb(shapely.geometry.shape(line)),
        "buffer_m": BUFFER_M,
        "min_overlap": 0.0,
    }
    t_stmt = median_time(partial(_statement_only, engine, impact_module._SUMMARY, wkb_params))
    with engine.begin() as conn:
        token = create_token(conn, name="bench-analysis", role="admin")
    import httpx

    with makazi_server(ctx, analysis_timeout_ms="600000") as base:
        headers = {"Authorization": f"Bearer {token}"}
        body = {"geometry": line, "buffer_m": BUFFER_M}

        def http_impact() -> None:
            httpx.post(f"{base}/analysis/impact", json=body, headers=headers, timeout=600)

        t_http = median_time(http_impact)
        access_url = f"{base}/analysis/access"
        access_params: dict[str, str | float] = {
            "facility_type": "water_point",
            "max_distance_m": ACCESS_M,
        }

        def http_access() -> None:
            response = httpx.get(access_url, params=access_params, headers=headers, timeout=600)
            response.raise_for_status()

        t_http_access = median_time(http_access, repeat=3)

    structures, households, facilities, t_load = _geopandas_load(ctx.url)
    start = time.perf_counter()
    gp_count, gp_people = _geopandas_impact(structures, households, line)
    t_gp = time.perf_counter() - start
    rows += [
        ["impact", "makazi geo.analysis.impact", t_ours, t_ours / t_raw, ours["structures"]],
        ["impact", "makazi HTTP POST /analysis/impact", t_http, t_http / t_raw, ""],
        ["impact", "makazi's statement alone (SQLAlchemy)", t_stmt, t_stmt / t_raw, ""],
        ["impact", "raw SQL (one statement, psycopg)", t_raw, 1.0, raw_structures],
        ["impact", "geopandas compute only", t_gp, t_gp / t_raw, gp_count],
        ["impact", "geopandas incl. load", t_load + t_gp, (t_load + t_gp) / t_raw, ""],
    ]
    notes.append(
        f"impact: {ours['structures']:,} structures, {ours['households']:,} households, "
        f"{ours['people']:,} people (geopandas people {gp_people:,}); buffer "
        f"{ours['buffer_area_m2'] / 1e4:.1f} ha. Makazi also assigns each straddling structure "
        "to the settlement holding its largest share; the raw query groups by the stored "
        "settlement_id."
    )

    # ------------------------------------------------------------------ access
    a_ours = access(
        db, facility_type="water_point", max_distance_m=ACCESS_M, settings=settings, role="admin"
    )
    t_a_ours = median_time(
        lambda: access(
            db,
            facility_type="water_point",
            max_distance_m=ACCESS_M,
            settings=settings,
            role="admin",
        ),
        repeat=3,
    )
    deg = ACCESS_M * 1.01 / (111_320 * math.cos(math.radians(1.4)))
    a_params = {"d": ACCESS_M, "deg": deg}
    geography_sql = _ACCESS_TEMPLATE.format(
        test=ACCESS_VARIANTS["bbox + ST_DWithin(geography)"], scope=""
    )
    a_raw = _raw(ctx.conninfo, geography_sql, a_params)[0]
    statement_params = {"facility_type": "water_point", "max_d": ACCESS_M}
    t_a_stmt = median_time(
        partial(_statement_only, engine, access_module._COUNTS_ALL, statement_params), repeat=3
    )
    t_a_raw = median_time(lambda: _raw(ctx.conninfo, geography_sql, a_params), repeat=3)
    start = time.perf_counter()
    gp_beyond = _geopandas_access(structures, facilities)
    t_a_gp = time.perf_counter() - start
    rows += [
        [
            "access",
            "makazi geo.analysis.access",
            t_a_ours,
            t_a_ours / t_a_raw,
            a_ours["structures_beyond"],
        ],
        ["access", "makazi HTTP GET /analysis/access", t_http_access, t_http_access / t_a_raw, ""],
        ["access", "makazi's statement alone (SQLAlchemy)", t_a_stmt, t_a_stmt / t_a_raw, ""],
        ["access", "raw SQL (one statement, psycopg)", t_a_raw, 1.0, int(a_raw[0])],
        ["access", "geopandas compute only", t_a_gp, t_a_gp / t_a_raw, gp_beyond],
        ["access", "geopandas incl. load", t_load + t_a_gp, (t_load + t_a_gp) / t_a_raw, ""],
    ]
    notes.append(
        f"access: {a_ours['structures_beyond']:,} of {a_ours['structures_total']:,} structures "
        f"({a_ours['share_beyond']:.1%}) are more than {ACCESS_M:g} m from a water point that "
        "is not broken."
    )

    # distance-test variants, on one settlement (about 100,000 structures)
    variant_rows: list[list[object]] = []
    scope = "AND t.settlement_id = 4"
    for name, test in ACCESS_VARIANTS.items():
        statement = _ACCESS_TEMPLATE.format(test=test, scope=scope)
        result = _raw(ctx.conninfo, statement, a_params)[0]
        seconds = median_time(partial(_raw, ctx.conninfo, statement, a_params), repeat=3)
        variant_rows.append([name, seconds, int(result[0]), int(result[1])])
    reach_statement = access_module._COUNTS_SETTLEMENT
    reach_params = {**statement_params, "settlement_id": 4}
    with engine.connect() as conn:
        reach = json.loads(conn.execute(reach_statement, reach_params).scalar_one())
    seconds = median_time(partial(_statement_only, engine, reach_statement, reach_params), repeat=3)
    variant_rows.append(
        [
            "makazi: buffer unions + geography in the 2 % band",
            seconds,
            reach["structures_beyond"],
            reach["structures_total"],
        ]
    )
    knn = ACCESS_KNN.format(scope=scope)
    result = _raw(ctx.conninfo, knn, a_params)[0]
    seconds = median_time(lambda: _raw(ctx.conninfo, knn, a_params), repeat=3)
    variant_rows.append(
        ["KNN <-> (8 nearest) + geography", seconds, int(result[0]), int(result[1])]
    )
    engine.dispose()

    return "\n".join(
        [
            f"{ctx.structures:,} demo structures. Corridor: {LENGTH_M / 1000:g} km line through "
            f"Kibera (demo) at {BEARING_DEG:g}°, buffer {BUFFER_M:g} m. Access: water points, "
            f"{ACCESS_M:g} m, all structures. Median of repeated runs; ratio is against the "
            "raw SQL statement. geopandas load (structures, households, facilities from "
            f"PostGIS) took {t_load:.1f} s.",
            "",
            markdown_table(["analysis", "route", "seconds", "x raw SQL", "structures"], rows),
            "",
            *[f"- {note}" for note in notes],
            "",
            "Access distance test, one settlement (Mukuru kwa Reuben demo):",
            "",
            markdown_table(["variant", "seconds", "beyond", "structures"], variant_rows),
        ]
    )
