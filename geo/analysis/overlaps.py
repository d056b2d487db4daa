"""Contested boundaries: pairs of settlements whose boundaries overlap, and by how much.

Overlapping boundaries are data (two claims on the same ground), not an
error.  Each pair appears once (``settlement_a < settlement_b``) when the
intersection has an area; the overlap geometry is the polygonal part of the
intersection and ``overlap_m2`` its ellipsoidal area.  Boundaries that only
touch are not listed.
"""

from __future__ import annotations

from sqlalchemy import text

from geo.analysis.common import require_settlement, set_timeout
from geo.core.db import Database
from geo.core.settings import Settings

__all__ = ["overlaps"]

_OVERLAPS = text(
    """
WITH pairs AS (
    SELECT a.id AS a_id, a.name AS a_name, b.id AS b_id, b.name AS b_name,
           ST_Area(a.geom::geography) AS a_m2, ST_Area(b.geom::geography) AS b_m2,
           ST_CollectionExtract(ST_Intersection(a.geom, b.geom), 3) AS geom
    FROM settlements a
    JOIN settlements b
      ON a.id < b.id AND b.deleted_at IS NULL AND a.geom && b.geom AND ST_Intersects(a.geom, b.geom)
    WHERE a.deleted_at IS NULL
      AND (CAST(:settlement_id AS bigint) IS NULL OR :settlement_id IN (a.id, b.id))
),
measured AS (
    SELECT pairs.*, ST_Area(geom::geography) AS m2 FROM pairs WHERE NOT ST_IsEmpty(geom)
)
SELECT json_build_object(
    'type', 'FeatureCollection',
    'features', coalesce(json_agg(json_build_object(
        'type', 'Feature',
        'id', a_id || '-' || b_id,
        'geometry', ST_AsGeoJSON(geom, 7)::json,
        'properties', json_build_object(
            'settlement_a', a_id,
            'settlement_b', b_id,
            'settlement_a_name', a_name,
            'settlement_b_name', b_name,
            'overlap_m2', round(m2::numeric, 2),
            'overlap_ha', round((m2 / 10000)::numeric, 4),
            'share_of_a', round((m2 / nullif(a_m2, 0))::numeric, 4),
            'share_of_b', round((m2 / nullif(b_m2, 0))::numeric, 4)))
        ORDER BY m2 DESC, a_id, b_id), '[]'),
    'numberReturned', count(*),
    'suppressed', '[]'::json
)::text
FROM measured
WHERE m2 > 0
"""
)


def overlaps(db: Database, *, settlement_id: int | None = None, settings: Settings) -> bytes:
    """Overlapping settlement pairs as a GeoJSON FeatureCollection (bytes PostGIS built).

    Parameters
    ----------
    settlement_id
        Only pairs that include this settlement (404 when it does not exist).
    """
    if settlement_id is not None:
        require_settlement(db, settlement_id)
    with db.read() as conn:
        set_timeout(conn, settings.analysis_timeout_ms)
        value = conn.execute(_OVERLAPS, {"settlement_id": settlement_id}).scalar_one()
    return str(value).encode()
