"""Access to services: which structures lie farther than a walk from a working facility.

The distance of a structure is the ellipsoidal (``geography``) distance from
its footprint's edge to the nearest live facility of the asked type whose
condition is not ``broken`` (a facility with no recorded condition counts).
A structure inside a facility's polygon is at distance 0.

How it stays fast, and linear, over millions of structures: two unions of
facility buffers drawn in UTM 37S, made per cell of a grid, settle almost every
structure with one point-in-polygon test against its own cell's unions
(``_MARKED``); the few within 1 % of the distance or across a cell edge get the
exact ellipsoidal test, which probes the GiST index on ``facilities.geom`` with the structure's
bounding box grown by the distance in degrees (``_NEAR``; the box only
pre-filters, every distance is measured in metres on the ellipsoid).  The
nearest facility (planner output) comes from the index's KNN order (``<->``)
refined by the geography distance of the eight nearest candidates.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import TextClause

from geo.analysis.common import (
    HOUSEHOLDS_OF_T,
    VERIFIED_STRUCTURE,
    WITHIN_SETTLEMENT,
    check_facility_type,
    check_range,
    fetch_json,
    require_settlement,
    sql,
    stream_features,
)
from geo.core.db import Database
from geo.core.privacy import Suppressor, sees_raw_counts
from geo.core.settings import Settings

__all__ = ["access", "access_features"]

_QUALIFYING = """
    f.deleted_at IS NULL AND f.type = :facility_type
    AND f.condition IS DISTINCT FROM 'broken'
"""


def _grown(geom: str, metres: str) -> str:
    """SQL growing ``geom``'s bounding box by ``metres`` on every side, in degrees.

    The box is in degrees only to use the index: 110,574 m is the shortest
    degree of latitude, 111,320 m x cos(latitude) the length of a degree of
    longitude at the box's latitude farthest from the equator; 1 % margin.
    """
    return f"""ST_Expand(
        {geom},
        {metres} * 1.01 / (111320.0 * cos(radians(least(89.0, greatest(
            abs(ST_YMin({geom}::box3d)), abs(ST_YMax({geom}::box3d))) + {metres} / 110574.0)))),
        {metres} * 1.01 / 110574.0)"""


# A qualifying facility within :max_d metres of structure t?  The box only
# pre-filters through the index; the distance is measured on the ellipsoid.
_NEAR = "".join(
    (
        """
    SELECT 1 FROM facilities f
    WHERE f.deleted_at IS NULL AND f.type = :facility_type
      AND f.condition IS DISTINCT FROM 'broken'
      AND f.geom && """,
        _grown("t.geom", ":max_d"),
        """
      AND ST_DWithin(f.geom::geography, t.geom::geography, :max_d)
""",
    )
)

_ALL = "".join(
    (
        "SELECT t.id, t.geom, ",
        HOUSEHOLDS_OF_T,
        " AS households FROM structures t WHERE t.deleted_at IS NULL",
        VERIFIED_STRUCTURE,
    )
)
_IN_SETTLEMENT = "".join(
    (
        "SELECT t.id, t.geom, ",
        HOUSEHOLDS_OF_T,
        " AS households FROM settlements s JOIN structures t ON ",
        WITHIN_SETTLEMENT,
        VERIFIED_STRUCTURE,
        " WHERE s.id = :settlement_id AND s.deleted_at IS NULL",
    )
)
# Facilities that can matter: all of them, or (for one settlement) those in the
# structures' extent grown by the distance.
_ANY_FACILITY = "true"
_NEAR_EXTENT = "".join(
    (
        "\n    f.geom && (SELECT ",
        _grown("e.box", ":max_d"),
        "\n      FROM (SELECT ST_Extent(geom)::geometry AS box FROM src) e)\n",
    )
)

# The side of a grid cell in degrees: about 1.1 km, or four distances when
# that is larger, so that a cell's union holds the buffers of the facilities
# in and around it (a band of one distance) without many repeats.
_CELL = "greatest(0.01, :max_d * 4 / 110574.0)"

# Marks each structure of src as beyond reach or not.  Most structures are
# decided by two unions of facility buffers drawn in UTM 37S: one 1 % smaller
# than the distance (inscribed polygons: touching it means within reach), one
# 1 % larger and circumscribed (32-gon circles: not touching it means beyond).
# The 1 % covers UTM's scale error across Kenya (< 0.4 %).  Only structures in
# the 2 % band between them get the exact ellipsoidal test (_NEAR).
#
# The unions are made per cell of a grid in degrees (_CELL), each from the
# buffers of the facilities whose box grown by 1.03 distances touches the
# cell (more than the larger buffer plus UTM's scale error), so the work
# grows with the structures and the facilities, not with the size of one
# union of them all.  A structure whose box lies in one cell is tested against
# that cell's unions (no union: no facility within reach); one whose box
# crosses a cell edge gets the exact test.  Structures come cell after cell
# (``ORDER BY i, j``): PostGIS prepares a polygon (builds its edge index) when
# the same one comes again, so each cell's unions are prepared once; in
# table order the cells alternate and preparing dominates (3x slower at 1M).
# ``OFFSET 0`` keeps ``marked`` a subquery, so ``beyond`` is worked out once
# per structure, not once per aggregate that reads it.
_MARKED = (
    """
fac AS MATERIALIZED (
    SELECT ST_Buffer(u, :max_d * 0.99, 'quad_segs=8') AS near,
           ST_Buffer(u, :max_d * 1.01 / cos(pi() / 32), 'quad_segs=8') AS maybe,
           box
    FROM (SELECT ST_Transform(f.geom, {srid}) AS u, """,
    _grown("f.geom", ":max_d * 1.03"),
    """::box2d AS box
          FROM facilities f
          WHERE """,
    _QUALIFYING,
    " AND ",
    "{scope}",
    """) q
),
reach AS MATERIALIZED (
    SELECT i, j, ST_Transform(ST_Union(near), 4326) AS near,
           ST_Transform(ST_Union(maybe), 4326) AS maybe
    FROM fac
    CROSS JOIN LATERAL generate_series({x_min}::bigint, {x_max}::bigint) i
    CROSS JOIN LATERAL generate_series({y_min}::bigint, {y_max}::bigint) j
    GROUP BY i, j
),
keyed AS (
    SELECT t.*,
           CASE WHEN {x_min} = {x_max} AND {y_min} = {y_max} THEN {x_min}::bigint END AS i,
           {y_min}::bigint AS j
    FROM (SELECT src.*, src.geom::box2d AS box FROM src) t
    ORDER BY i, j
),
marked AS (
    SELECT t.id, t.geom, t.households,
           CASE WHEN t.i IS NULL THEN NOT EXISTS (""",
    _NEAR,
    """)
                WHEN r.i IS NULL THEN true
                WHEN ST_Intersects(t.geom, r.near) THEN false
                WHEN NOT ST_Intersects(t.geom, r.maybe) THEN true
                ELSE NOT EXISTS (""",
    _NEAR,
    """) END AS beyond
    FROM keyed t LEFT JOIN reach r ON r.i = t.i AND r.j = t.j
    OFFSET 0
)
""",
)
# The cell numbers of a box's corners.
_CELLS = {
    f"{{{axis}_{end}}}": f"floor(ST_{axis.upper()}{end.capitalize()}(box) / {_CELL})"
    for axis in "xy"
    for end in ("min", "max")
}


def _marked(scope: str) -> str:
    text = "".join(scope if part == "{scope}" else part for part in _MARKED)
    for name, value in _CELLS.items():
        text = text.replace(name, value)
    return text


def _counts(source: str, scope: str) -> TextClause:
    return sql(
        "WITH src AS (",
        source,
        "),\n",
        _marked(scope),
        """
SELECT json_build_object(
    'structures_total', count(*),
    'households_total', coalesce(sum(households), 0),
    'structures_beyond', count(*) FILTER (WHERE beyond),
    'households_beyond', coalesce(sum(households) FILTER (WHERE beyond), 0),
    'facilities_considered', (SELECT count(*) FROM facilities f WHERE """,
        _QUALIFYING,
        """)
)::text
FROM marked
""",
    )


def _features(source: str, scope: str) -> TextClause:
    return sql(
        "WITH src AS (",
        source,
        "),\n",
        _marked(scope),
        """
SELECT json_build_object(
    'type', 'Feature',
    'id', t.id,
    'geometry', ST_AsGeoJSON(t.geom, 7)::json,
    'properties', json_build_object(
        'structure_number', s2.structure_number,
        'use', s2.use,
        'settlement_id', s2.settlement_id,
        'households', t.households,
        'nearest_facility_id', n.id,
        'nearest_distance_m', round(n.d::numeric, 2))
)::text
FROM marked t
JOIN structures s2 ON s2.id = t.id
LEFT JOIN LATERAL (
    SELECT c.id, ST_Distance(c.geom::geography, t.geom::geography) AS d
    FROM (SELECT f.id, f.geom FROM facilities f
          WHERE """,
        _QUALIFYING,
        """
          ORDER BY f.geom <-> t.geom
          LIMIT 8) c
    ORDER BY 2, 1
    LIMIT 1
) n ON true
WHERE t.beyond
ORDER BY t.id
""",
    )


_COUNTS_ALL = _counts(_ALL, _ANY_FACILITY)
_COUNTS_SETTLEMENT = _counts(_IN_SETTLEMENT, _NEAR_EXTENT)
_FEATURES_ALL = _features(_ALL, _ANY_FACILITY)
_FEATURES_SETTLEMENT = _features(_IN_SETTLEMENT, _NEAR_EXTENT)


def _params(
    db: Database,
    *,
    facility_type: str,
    max_distance_m: float,
    settlement_id: int | None,
    settings: Settings,
    verified: bool,
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "verified": verified,
        "facility_type": check_facility_type(facility_type),
        "max_d": check_range(
            max_distance_m,
            field="max_distance_m",
            low=0,
            high=settings.analysis_max_distance_m,
            setting="analysis_max_distance_m",
        ),
    }
    if settlement_id is not None:
        require_settlement(db, settlement_id)
        params["settlement_id"] = settlement_id
    return params


def _share(top: int, bottom: int) -> float | None:
    return round(top / bottom, 4) if bottom else None


def access(
    db: Database,
    *,
    facility_type: str,
    max_distance_m: float,
    settlement_id: int | None = None,
    settings: Settings,
    role: str | None,
    verified: bool = False,
) -> dict[str, Any]:
    """How many structures (and their households) lie beyond ``max_distance_m``.

    Returns
    -------
    dict
        ``facility_type``, ``max_distance_m``, ``settlement_id``,
        ``structures_total``, ``structures_beyond``, ``share_beyond``,
        ``households_total``, ``households_beyond``,
        ``share_households_beyond``, ``facilities_considered``, ``verified_only``,
        ``suppressed``.
    """
    params = _params(
        db,
        facility_type=facility_type,
        max_distance_m=max_distance_m,
        settlement_id=settlement_id,
        settings=settings,
        verified=verified,
    )
    statement = _COUNTS_ALL if settlement_id is None else _COUNTS_SETTLEMENT
    row = fetch_json(db, statement, params, timeout_ms=settings.analysis_timeout_ms, cached=True)
    shares = {
        "share_beyond": _share(row["structures_beyond"], row["structures_total"]),
        "share_households_beyond": _share(row["households_beyond"], row["households_total"]),
    }
    hide = Suppressor(active=not sees_raw_counts(role))
    counts = hide.counts(
        {
            key: row[key]
            for key in (
                "structures_total",
                "structures_beyond",
                "households_total",
                "households_beyond",
                "facilities_considered",
            )
        },
        prefix="",
    )
    for base, share in (
        ("structures_total", "share_beyond"),
        ("structures_beyond", "share_beyond"),
        ("households_total", "share_households_beyond"),
        ("households_beyond", "share_households_beyond"),
    ):
        shares.update(hide.derived({share: shares[share]}, base=base, prefix=""))
    return {
        "facility_type": params["facility_type"],
        "max_distance_m": params["max_d"],
        "settlement_id": settlement_id,
        "structures_total": counts["structures_total"],
        "structures_beyond": counts["structures_beyond"],
        "share_beyond": shares["share_beyond"],
        "households_total": counts["households_total"],
        "households_beyond": counts["households_beyond"],
        "share_households_beyond": shares["share_households_beyond"],
        "facilities_considered": counts["facilities_considered"],
        "verified_only": verified,
        "suppressed": hide.suppressed,
    }


def access_features(
    db: Database,
    *,
    facility_type: str,
    max_distance_m: float,
    settlement_id: int | None = None,
    settings: Settings,
    verified: bool = False,
) -> Iterator[bytes]:
    """The structures beyond reach, each with its nearest facility id and distance (planner).

    Streamed GeoJSON; prime the iterator with ``next()`` before responding.
    """
    params = _params(
        db,
        facility_type=facility_type,
        max_distance_m=max_distance_m,
        settlement_id=settlement_id,
        settings=settings,
        verified=verified,
    )
    statement = _FEATURES_ALL if settlement_id is None else _FEATURES_SETTLEMENT
    return stream_features(db, statement, params, timeout_ms=settings.analysis_timeout_ms)
