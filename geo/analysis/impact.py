"""Impact of a corridor or zone: what a road reserve, riparian strip or wayleave takes.

The zone is the input geometry buffered by ``buffer_m`` metres in UTM 37S.  A
structure is affected when its footprint intersects the zone (and, with
``min_overlap``, when at least that fraction of its footprint lies inside).
Each affected structure counts once, in the settlement holding the largest
share of its footprint (ties: the structure's own ``settlement_id``, then the
lowest id); structures outside every settlement are listed under
``settlement_id: null``.  Households and people come from the enumeration
(``count(*)`` and ``sum(members)`` of live households).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from geo.analysis.common import (
    VERIFIED_HOUSEHOLD,
    VERIFIED_STRUCTURE,
    check_range,
    fetch_json,
    sql,
    stream_features,
)
from geo.analysis.geometry_input import AnalysisGeometry, parse_geometry
from geo.core.db import Database
from geo.core.errors import InvalidInput
from geo.core.privacy import Suppressor, sees_raw_counts
from geo.core.settings import Settings
from geo.layers.placement import swap_hint

__all__ = ["ImpactRequest", "impact", "impact_features"]


class ImpactRequest(BaseModel):
    """The body of ``POST /analysis/impact``.

    Attributes
    ----------
    geometry
        A GeoJSON geometry (a Feature or FeatureCollection is accepted too).
    buffer_m
        Buffer distance in metres; required unless the geometry is a polygon.
    crs
        CRS of the coordinates (default CRS84 lon/lat).
    min_overlap
        Fraction (0..1) of a footprint that must lie inside the zone; 0 means
        any intersection.
    """

    model_config = ConfigDict(extra="forbid")

    geometry: Any = None
    buffer_m: float | None = None
    crs: str | None = None
    min_overlap: float = Field(default=0.0, ge=0.0, le=1.0)


# The zone in UTM 37S (for measures) and in EPSG:4326 (for the index).  They
# are written out where used rather than kept in a CTE: with the input bound,
# PostgreSQL folds them to constants when planning, which lets it use the
# index and parallel workers as it would for a literal polygon.
_ZONE_UTM = """(CASE WHEN :buffer_m > 0
        THEN ST_Buffer(ST_Transform(ST_GeomFromWKB(:wkb, 4326), {srid}), :buffer_m, 'quad_segs=16')
        ELSE ST_Transform(ST_GeomFromWKB(:wkb, 4326), {srid}) END)"""
_ZONE = "".join(
    (
        "(CASE WHEN :buffer_m > 0 THEN ST_Transform(ST_Segmentize(",
        _ZONE_UTM,
        ", 500), 4326) ELSE ST_GeomFromWKB(:wkb, 4326) END)",
    )
)

# The affected structures, each with the settlement it counts in: its own
# settlement_id when that boundary contains it (no other can hold a larger
# share, and ties go to it), else the one holding the largest share of its
# footprint (ties: its own settlement_id, then the lowest id).
_AFFECTED = (
    """
WITH hit AS MATERIALIZED (
    SELECT t.id, t.use, t.settlement_id, t.geom
    FROM structures t
    WHERE t.deleted_at IS NULL""",
    VERIFIED_STRUCTURE,
    """
      AND t.geom && """,
    _ZONE,
    """
      AND ST_Intersects(t.geom, """,
    _ZONE,
    """)
      AND CASE WHEN :min_overlap <= 0 OR GeometryType(t.geom) = 'POINT' THEN true
               ELSE ST_Area(ST_Intersection(ST_Transform(t.geom, {srid}), """,
    _ZONE_UTM,
    """))
                    >= :min_overlap * ST_Area(ST_Transform(t.geom, {srid})) END
),
placed AS (
    SELECT hit.*, coalesce(own.id, home.id) AS home_id, coalesce(own.name, home.name) AS home_name,
           hh.households, hh.people
    FROM hit
    LEFT JOIN settlements own
      ON own.id = hit.settlement_id AND own.deleted_at IS NULL AND ST_Within(hit.geom, own.geom)
    LEFT JOIN LATERAL (
        SELECT o.id, o.name
        FROM settlements o
        WHERE own.id IS NULL
          AND o.deleted_at IS NULL AND o.geom && hit.geom AND ST_Intersects(o.geom, hit.geom)
        ORDER BY CASE WHEN ST_CoveredBy(hit.geom, o.geom) THEN 1.0
                      ELSE ST_Area(ST_Transform(ST_Intersection(hit.geom, o.geom), {srid}))
                           / nullif(ST_Area(ST_Transform(hit.geom, {srid})), 0) END DESC NULLS LAST,
                 (o.id IS NOT DISTINCT FROM hit.settlement_id) DESC,
                 o.id
        LIMIT 1
    ) home ON true
    -- per structure, by index: robust whatever the planner guesses for hit's size
    CROSS JOIN LATERAL (
        SELECT count(*) AS households, coalesce(sum(h.members), 0) AS people
        FROM households h
        WHERE h.structure_id = hit.id AND h.deleted_at IS NULL""",
    VERIFIED_HOUSEHOLD,
    """
    ) hh
)
""",
)

_SUMMARY = sql(
    *_AFFECTED,
    """,
per AS (
    SELECT p.home_id, min(p.home_name) AS name, count(*) AS structures,
           coalesce(sum(p.households), 0)::bigint AS households,
           coalesce(sum(p.people), 0)::bigint AS people
    FROM placed p
    GROUP BY p.home_id
)
SELECT json_build_object(
    'buffer_area_m2', ST_Area(geography(ST_Transform(""",
    _ZONE_UTM,
    """, 4326))),
    'structures', (SELECT coalesce(sum(structures), 0) FROM per),
    'households', (SELECT coalesce(sum(households), 0) FROM per),
    'people', (SELECT coalesce(sum(people), 0) FROM per),
    'structures_by_use', (
        SELECT coalesce(json_object_agg(u.use, u.n ORDER BY u.n DESC, u.use), '{}')
        FROM (SELECT coalesce(use, 'unknown') AS use, count(*) AS n FROM hit GROUP BY 1) u),
    'by_settlement', (
        SELECT coalesce(json_agg(json_build_object(
                   'settlement_id', home_id, 'name', name, 'structures', structures,
                   'households', households, 'people', people)
                 ORDER BY structures DESC, home_id NULLS LAST), '[]')
        FROM per),
    'facilities_by_type', (
        SELECT coalesce(json_object_agg(x.type, x.n ORDER BY x.n DESC, x.type), '{}')
        FROM (SELECT f.type, count(*) AS n
              FROM facilities f
              WHERE f.deleted_at IS NULL AND f.geom && """,
    _ZONE,
    """ AND ST_Intersects(f.geom, """,
    _ZONE,
    """)
              GROUP BY f.type) x)
)::text
""",
)

_FEATURES = sql(
    *_AFFECTED,
    """
SELECT json_build_object(
    'type', 'Feature',
    'id', p.id,
    'geometry', ST_AsGeoJSON(p.geom, 7)::json,
    'properties', json_build_object(
        'structure_number', t.structure_number,
        'use', t.use,
        'wall_material', t.wall_material,
        'roof_material', t.roof_material,
        'storeys', t.storeys,
        'settlement_id', p.home_id,
        'settlement', p.home_name,
        'households', p.households,
        'people', p.people,
        'share_inside', CASE WHEN GeometryType(p.geom) = 'POINT' OR ST_CoveredBy(p.geom, """,
    _ZONE,
    """)
                             THEN 1.0
                             ELSE round((
                                 ST_Area(ST_Intersection(ST_Transform(p.geom, {srid}), """,
    _ZONE_UTM,
    """))
                                 / nullif(ST_Area(ST_Transform(p.geom, {srid})), 0))::numeric, 4)
                        END)
)::text
FROM placed p
JOIN structures t ON t.id = p.id
ORDER BY p.id
""",
)


def _prepare(request: ImpactRequest, settings: Settings) -> tuple[AnalysisGeometry, float]:
    buffer_m = 0.0
    if request.buffer_m is not None:
        buffer_m = check_range(
            request.buffer_m,
            field="buffer_m",
            low=0,
            high=settings.analysis_max_buffer_m,
            error=InvalidInput,
            setting="analysis_max_buffer_m",
        )
    geometry = parse_geometry(
        request.geometry,
        crs=request.crs,
        buffer_m=buffer_m,
        max_vertices=settings.analysis_max_vertices,
        max_area_km2=settings.analysis_max_area_km2,
    )
    return geometry, buffer_m


def _params(
    geometry: AnalysisGeometry, buffer_m: float, min_overlap: float, verified: bool
) -> dict[str, Any]:
    return {
        "wkb": geometry.wkb,
        "buffer_m": buffer_m,
        "min_overlap": min_overlap,
        "verified": verified,
    }


def impact(
    db: Database,
    *,
    request: ImpactRequest,
    settings: Settings,
    role: str | None,
    verified: bool = False,
) -> dict[str, Any]:
    """Counts of what the zone takes, suppressed for ``role`` as :mod:`geo.core.privacy` rules.

    ``verified`` counts only verified structures and households.

    Returns
    -------
    dict
        ``buffer_m``, ``min_overlap``, ``buffer_area_m2`` (ellipsoidal area of
        the zone), ``structures``, ``households``, ``people``,
        ``structures_by_use`` ``{use: n}``, ``by_settlement``
        ``[{settlement_id, name, structures, households, people}]``,
        ``facilities_by_type`` ``{type: n}``, ``verified_only`` and ``suppressed``.
    """
    geometry, buffer_m = _prepare(request, settings)
    row = fetch_json(
        db,
        _SUMMARY,
        _params(geometry, buffer_m, request.min_overlap, verified),
        timeout_ms=settings.analysis_timeout_ms,
    )
    hide = Suppressor(active=not sees_raw_counts(role))
    totals = hide.counts(
        {key: row[key] for key in ("structures", "households", "people")}, prefix=""
    )
    totals.update(hide.derived({"people": totals["people"]}, base="households", prefix=""))
    by_settlement = hide.rows(
        row["by_settlement"], ["structures", "households", "people"], "by_settlement"
    )
    for index, entry in enumerate(by_settlement):
        if entry["households"] is None and entry["people"] is not None:
            entry["people"] = None
            hide.note(f"by_settlement[{index}].people")
    hint = None
    if not row["structures"] and not row["facilities_by_type"]:
        with db.read() as conn:
            hint = swap_hint(
                conn, geometry.wkb, what="geometry", max_km=settings.max_km_from_settlements
            )
    return {
        "geometry_type": geometry.geom_type,
        "buffer_m": buffer_m,
        "min_overlap": request.min_overlap,
        "buffer_area_m2": round(float(row["buffer_area_m2"]), 2),
        **totals,
        "structures_by_use": hide.breakdown(row["structures_by_use"], "structures_by_use"),
        "by_settlement": by_settlement,
        "facilities_by_type": hide.breakdown(row["facilities_by_type"], "facilities_by_type"),
        "verified_only": verified,
        "suppressed": hide.suppressed,
        "hint": hint,
    }


def impact_features(
    db: Database, *, request: ImpactRequest, settings: Settings, verified: bool = False
) -> Iterator[bytes]:
    """The affected structures as a GeoJSON FeatureCollection (planner output), streamed.

    Input errors raise before the iterator is returned; prime the iterator
    (``next()``) to surface database errors and timeouts before responding.
    """
    geometry, buffer_m = _prepare(request, settings)
    return stream_features(
        db,
        _FEATURES,
        _params(geometry, buffer_m, request.min_overlap, verified),
        timeout_ms=settings.analysis_timeout_ms,
    )
