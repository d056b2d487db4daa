"""A perimeter walk as a settlement boundary (see :mod:`geo.traces.perimeter`)."""

from __future__ import annotations

import json
from typing import Any

import shapely
from sqlalchemy import Connection, text

from geo.core.auth import Principal
from geo.core.crs import METRIC_SRID
from geo.core.errors import InvalidInput, NotFound, PreconditionFailed
from geo.traces.perimeter import OpenWalk, TooFewPoints, boundary_polygon
from geo.traces.reads import visible_trace

__all__ = ["trace_boundary"]


# --------------------------------------------------------------------- boundary
def trace_boundary(
    conn: Connection,
    *,
    trace_id: int,
    user: Principal,
    max_gap_m: float,
    simplify_m: float,
    settlement_id: int | None = None,
    expected_version: int | None = None,
) -> tuple[dict[str, Any], int | None]:
    """The polygon a perimeter walk encloses, as a GeoJSON Feature.

    The trace's kept track points, in order, are projected to UTM 37S and
    handed to :func:`geo.perimeter.boundary_polygon`.  With ``settlement_id``
    the polygon becomes that settlement's new boundary version (audited);
    ``expected_version`` is its ``If-Match`` (None for ``*``).

    Returns
    -------
    The Feature and, when a settlement was written, its new version.
    """
    visible_trace(conn, trace_id, user)
    wkb = conn.execute(
        text(
            # a MultiPoint, not a line: a one-point line is not valid WKB for shapely
            "SELECT ST_AsBinary(ST_Transform(ST_Collect(geom ORDER BY track, segment, seq), "
            ":srid)) FROM trace_points WHERE trace_id = :id AND kind = 'trkpt'"
        ),
        {"id": trace_id, "srid": METRIC_SRID},
    ).scalar()
    if wkb is None:
        raise InvalidInput(f"trace {trace_id} has no track points to make a boundary from")
    points = shapely.from_wkb(bytes(wkb))
    try:
        result = boundary_polygon(
            shapely.get_coordinates(points), max_gap_m=max_gap_m, simplify_m=simplify_m
        )
    except OpenWalk as exc:
        raise InvalidInput(
            str(exc), closure_gap_m=round(exc.gap_m, 2), max_gap_m=exc.max_gap_m
        ) from exc
    except TooFewPoints as exc:
        raise InvalidInput(str(exc)) from exc
    polygon_wkb = shapely.to_wkb(result.polygon)
    geometry_json = conn.execute(
        text("SELECT ST_AsGeoJSON(ST_Transform(ST_SetSRID(ST_GeomFromWKB(:w), :srid), 4326), 8)"),
        {"w": polygon_wkb, "srid": METRIC_SRID},
    ).scalar_one()
    properties: dict[str, Any] = {
        "trace_id": trace_id,
        "area_m2": round(result.area_m2, 2),
        "perimeter_m": round(result.perimeter_m, 2),
        "closure_gap_m": round(result.closure_gap_m, 2),
        "vertices": result.vertices,
        "simplify_m": simplify_m,
        "crs_for_measures": f"EPSG:{METRIC_SRID}",
        "warnings": result.warnings,
    }
    new_version: int | None = None
    if settlement_id is not None:
        new_version = _write_settlement(conn, settlement_id, polygon_wkb, expected_version)
        properties["settlement_id"] = settlement_id
        properties["settlement_version"] = new_version
    feature = {"type": "Feature", "geometry": json.loads(geometry_json), "properties": properties}
    return feature, new_version


def _write_settlement(
    conn: Connection, settlement_id: int, polygon_wkb: bytes, expected_version: int | None
) -> int:
    current = conn.execute(
        text("SELECT version FROM settlements WHERE id = :i AND deleted_at IS NULL FOR UPDATE"),
        {"i": settlement_id},
    ).first()
    if current is None:
        raise NotFound(f"settlements {settlement_id} does not exist")
    if expected_version is not None and int(current.version) != expected_version:
        raise PreconditionFailed(
            f"settlements {settlement_id} is at version {current.version}; your If-Match is stale",
            current_version=int(current.version),
        )
    version = conn.execute(
        text(
            "UPDATE settlements SET geom = ST_Multi(ST_CollectionExtract(ST_MakeValid("
            "ST_Transform(ST_SetSRID(ST_GeomFromWKB(:w), :srid), 4326)), 3)) "
            "WHERE id = :i RETURNING version"
        ),
        {"w": polygon_wkb, "i": settlement_id, "srid": METRIC_SRID},
    ).scalar_one()
    return int(version)
