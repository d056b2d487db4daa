"""Density grid: square cells aligned in UTM 37S with structure, household and people counts.

Cells are ``cell_m`` metres square with corners at multiples of ``cell_m`` in
EPSG:32737 (``METRIC_SRID``) coordinates, so grids of the same size line up across settlements
and requests.  A cell counts a structure when it holds the structure's
``ST_PointOnSurface``, so every structure counts once.  The structures are
those within the settlement (:data:`~geo.analysis.common.WITHIN_SETTLEMENT`);
only cells holding at least one structure are returned.
"""

from __future__ import annotations

import json
import math
from typing import Any

from geo.analysis.common import (
    VERIFIED_HOUSEHOLD,
    VERIFIED_STRUCTURE,
    WITHIN_SETTLEMENT,
    fetch_json,
    sql,
)
from geo.core.db import Database
from geo.core.errors import BadRequest, NotFound
from geo.core.privacy import Suppressor, sees_raw_counts
from geo.core.settings import Settings

__all__ = ["density"]

_EXTENT = sql(
    """
SELECT ST_XMin(b), ST_YMin(b), ST_XMax(b), ST_YMax(b)
FROM (SELECT ST_Transform(geom, {srid})::box2d AS b
      FROM settlements WHERE id = :id AND deleted_at IS NULL) e
"""
)

_GRID = sql(
    """
WITH s AS MATERIALIZED (
    SELECT id, geom FROM settlements WHERE id = :id AND deleted_at IS NULL
),
st AS MATERIALIZED (
    SELECT t.id, ST_Transform(ST_PointOnSurface(t.geom), {srid}) AS p
    FROM s JOIN structures t ON """,
    WITHIN_SETTLEMENT,
    VERIFIED_STRUCTURE,
    """
),
cells AS (
    SELECT floor(ST_X(st.p) / :cell_m)::bigint AS i, floor(ST_Y(st.p) / :cell_m)::bigint AS j,
           count(*) AS structures,
           sum(hh.households)::bigint AS households,
           sum(hh.people)::bigint AS people
    FROM st
    -- per structure, by index: robust whatever the planner guesses for st's size
    CROSS JOIN LATERAL (
        SELECT count(*) AS households, coalesce(sum(h.members), 0) AS people
        FROM households h
        WHERE h.structure_id = st.id AND h.deleted_at IS NULL""",
    VERIFIED_HOUSEHOLD,
    """
    ) hh
    GROUP BY 1, 2
)
SELECT coalesce(json_agg(json_build_object(
    'type', 'Feature',
    'id', i || ':' || j,
    'geometry', ST_AsGeoJSON(ST_Transform(ST_Segmentize(
        ST_MakeEnvelope(i * :cell_m, j * :cell_m, (i + 1) * :cell_m, (j + 1) * :cell_m, {srid}),
        :cell_m / 4.0), 4326), 7)::json,
    'properties', json_build_object(
        'i', i, 'j', j, 'cell_m', :cell_m,
        'structures', structures, 'households', households, 'people', people))
    ORDER BY j DESC, i), '[]')::text
FROM cells
""",
)


def _check_cell(db: Database, settlement_id: int, cell_m: float, settings: Settings) -> None:
    if not math.isfinite(cell_m) or not (
        settings.analysis_min_cell_m <= cell_m <= settings.analysis_max_cell_m
    ):
        raise BadRequest(
            f"cell_m: must be between {settings.analysis_min_cell_m:g} and "
            f"{settings.analysis_max_cell_m:g} metres",
            field="cell_m",
        )
    if not -(2**63) <= settlement_id < 2**63:
        raise NotFound(f"settlement_id: no settlement {settlement_id}", field="settlement_id")
    with db.read() as conn:
        extent = conn.execute(_EXTENT, {"id": settlement_id}).first()
    if extent is None:
        raise NotFound(f"settlement_id: no settlement {settlement_id}", field="settlement_id")
    xmin, ymin, xmax, ymax = (float(v) for v in extent)
    cells = (math.floor(xmax / cell_m) - math.floor(xmin / cell_m) + 1) * (
        math.floor(ymax / cell_m) - math.floor(ymin / cell_m) + 1
    )
    if cells > settings.analysis_max_cells:
        raise BadRequest(
            f"cell_m: {cell_m:g} m cells would make a grid of {cells} cells over this "
            f"settlement, above the limit of {settings.analysis_max_cells} "
            "(setting MAKAZI_ANALYSIS_MAX_CELLS); use larger cells",
            field="cell_m",
        )


def density(
    db: Database,
    *,
    settlement_id: int,
    cell_m: float,
    settings: Settings,
    role: str | None,
    verified: bool = False,
) -> bytes:
    """The density grid of one settlement as GeoJSON bytes, suppressed for ``role``.

    Each cell's properties: ``i``, ``j`` (column and row: the cell spans
    ``i*cell_m .. (i+1)*cell_m`` east and ``j*cell_m .. (j+1)*cell_m`` north in
    EPSG:32737), ``cell_m``, ``structures``, ``households``, ``people``,
    ``structures_per_ha``, ``people_per_ha`` and the cell's ``suppressed``
    names; the collection's ``suppressed`` lists every name hidden in any cell, and its
    ``verified_only`` says whether only verified rows were counted.
    """
    _check_cell(db, settlement_id, cell_m, settings)
    features: list[dict[str, Any]] = fetch_json(
        db,
        _GRID,
        {"id": settlement_id, "cell_m": float(cell_m), "verified": verified},
        timeout_ms=settings.analysis_timeout_ms,
    )
    active = not sees_raw_counts(role)
    hidden: list[str] = []
    cell_ha = cell_m * cell_m / 10_000
    for feature in features:
        props = feature["properties"]
        props["structures_per_ha"] = round(props["structures"] / cell_ha, 2)
        props["people_per_ha"] = round(props["people"] / cell_ha, 2)
        hide = Suppressor(active=active)
        counts = hide.counts(
            {key: props[key] for key in ("structures", "households", "people")}, prefix=""
        )
        counts.update(hide.derived({"people": counts["people"]}, base="households", prefix=""))
        counts.update(
            hide.derived(
                {"structures_per_ha": props["structures_per_ha"]}, base="structures", prefix=""
            )
        )
        counts.update(
            hide.derived({"people_per_ha": props["people_per_ha"]}, base="people", prefix="")
        )
        props.update(counts)
        props["suppressed"] = hide.suppressed
        hidden.extend(name for name in hide.suppressed if name not in hidden)
    collection = {
        "type": "FeatureCollection",
        "features": features,
        "numberReturned": len(features),
        "settlement_id": settlement_id,
        "cell_m": cell_m,
        "verified_only": verified,
        "suppressed": hidden,
    }
    return json.dumps(collection, separators=(",", ":")).encode()
