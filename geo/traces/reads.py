"""Reading traces: metadata, lists, the original bytes and the cleaned geometry, per visibility."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, select, text

from geo.core.auth import Principal
from geo.core.errors import NotFound
from geo.core.tables import traces
from geo.layers.registry import TRACES

__all__ = [
    "FILE_CHUNK",
    "summary_json",
    "trace_summary",
    "visible_trace",
    "get_trace",
    "list_traces",
    "trace_file",
    "trace_file_chunks",
    "trace_geojson_chunks",
]

FILE_CHUNK = 4 * 1024 * 1024

_SUMMARY = """
SELECT id, name, owner, visibility, settlement_id, version, stats, dropped, warnings,
       created_at, updated_at
FROM traces WHERE id = :id AND deleted_at IS NULL
"""


def trace_summary(row: Any) -> dict[str, Any]:
    return {
        "id": int(row.id),
        "name": row.name,
        "owner": row.owner,
        "visibility": row.visibility,
        "settlement_id": row.settlement_id,
        "version": int(row.version),
        "stats": row.stats,
        "dropped": row.dropped,
        "warnings": row.warnings,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


def summary_json(conn: Connection, trace_id: int) -> bytes:
    row = conn.execute(text(_SUMMARY), {"id": trace_id}).one()
    return json.dumps(trace_summary(row)).encode()


_ROW = tuple(
    traces.c[name]
    for name in (
        "id",
        "name",
        "owner",
        "visibility",
        "settlement_id",
        "version",
        "stats",
        "dropped",
        "warnings",
        "created_at",
        "updated_at",
    )
)


def visible_trace(conn: Connection, trace_id: int, user: Principal | None) -> Any:
    """The live trace row the user may see, or NotFound (also for invisible ones)."""
    row = conn.execute(
        select(*_ROW, traces.c.content_sha256).where(traces.c.id == trace_id, TRACES.visible(user))
    ).first()
    if row is None:
        raise NotFound(f"trace {trace_id} does not exist or is not visible to you")
    return row


def get_trace(conn: Connection, *, trace_id: int, user: Principal | None) -> dict[str, Any]:
    """A trace's metadata (``id, name, owner, visibility, stats, dropped, warnings, …``)."""
    return trace_summary(visible_trace(conn, trace_id, user))


def list_traces(
    conn: Connection,
    *,
    user: Principal | None,
    limit: int,
    offset: int = 0,
    owner: str | None = None,
    settlement_id: int | None = None,
    visibility: str | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Traces the user may see, newest first; and whether more remain."""
    statement = select(*_ROW).where(TRACES.visible(user))
    if owner is not None:
        statement = statement.where(traces.c.owner == owner)
    if settlement_id is not None:
        statement = statement.where(traces.c.settlement_id == settlement_id)
    if visibility is not None:
        statement = statement.where(traces.c.visibility == visibility)
    statement = statement.order_by(traces.c.id.desc()).limit(limit + 1).offset(offset)
    rows = conn.execute(statement).all()
    return [trace_summary(row) for row in rows[:limit]], len(rows) > limit


def trace_file(conn: Connection, *, trace_id: int, user: Principal | None) -> dict[str, Any]:
    """Name, content type, size and SHA-256 of a trace's original upload."""
    row = visible_trace(conn, trace_id, user)
    meta = conn.execute(
        text("SELECT content_type, size_bytes FROM trace_files WHERE trace_id = :id"),
        {"id": trace_id},
    ).one()
    return {
        "name": row.name,
        "content_type": meta.content_type,
        "size": int(meta.size_bytes),
        "sha256": row.content_sha256,
    }


def trace_file_chunks(conn: Connection, *, trace_id: int, size: int) -> Iterator[bytes]:
    """The original bytes, a few MB at a time."""
    for offset in range(0, size, FILE_CHUNK):
        chunk = conn.execute(
            text(
                "SELECT substring(content FROM :start FOR :n) FROM trace_files WHERE trace_id = :id"
            ),
            {"start": offset + 1, "n": FILE_CHUNK, "id": trace_id},
        ).scalar_one()
        yield bytes(chunk)


_GEOJSON = """
(SELECT json_build_object(
    'type', 'Feature',
    'geometry', ST_AsGeoJSON(coalesce(s.geom, p.geom), 7)::json,
    'properties', json_build_object('kind', s.kind, 'track', s.track, 'segment', s.segment,
                                    'points', s.points))::text
FROM trace_segments s
LEFT JOIN LATERAL (
    SELECT geom FROM trace_points
    WHERE s.geom IS NULL AND s.points = 1 AND trace_id = s.trace_id
      AND kind = CASE s.kind WHEN 'track' THEN 'trkpt' ELSE 'rtept' END
      AND track = s.track AND segment = s.segment
    LIMIT 1) p ON TRUE
WHERE s.trace_id = :id AND (s.geom IS NOT NULL OR p.geom IS NOT NULL)
ORDER BY s.kind = 'route', s.track, s.segment)
UNION ALL
(SELECT json_build_object(
    'type', 'Feature',
    'geometry', ST_AsGeoJSON(geom, 7)::json,
    'properties', json_build_object('kind', 'waypoint', 'name', name, 'ele', ele,
                                    'time', time, 'extensions', extensions))::text
FROM trace_points WHERE trace_id = :id AND kind = 'wpt'
ORDER BY seq)
"""


def trace_geojson_chunks(
    conn: Connection, *, trace_id: int, user: Principal | None
) -> Iterator[bytes]:
    """The cleaned geometry as a GeoJSON FeatureCollection, built by PostGIS and streamed.

    Track segments come first, then route segments, then waypoints, each in
    file order.  Track and route segments are LineStrings (a one-point segment a Point);
    waypoints are Points with their name, elevation, time and extensions.
    """
    row = visible_trace(conn, trace_id, user)
    head = {
        "type": "FeatureCollection",
        "trace": {"id": int(row.id), "name": row.name, "visibility": row.visibility},
        "features": [],
    }
    prefix = json.dumps(head)[: -len("]}")]
    yield prefix.encode()
    result = conn.execute(
        text(_GEOJSON),
        {"id": trace_id},
        execution_options={"stream_results": True, "yield_per": 2000},
    )
    first = True
    for feature in result.scalars():
        yield (feature if first else "," + feature).encode()
        first = False
    yield b"]}"
