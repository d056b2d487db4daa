"""TileJSON 3.0.0 for the vector tiles, bounded by the mapped area.

The bounds (and the centre the web map opens on) are the settlements near
their median centre (:func:`geo.layers.placement.mapped_area`), so one
far-away trace or a settlement typed with swapped axes does not open every
phone at world scale; only without settlements is the extent of every public
layer used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, text

from geo.layers.placement import mapped_area
from geo.tiles.cache import TileCache
from geo.tiles.feed import change_counters
from geo.tiles.render import LAYERS

__all__ = ["data_bounds", "tilejson", "vector_layers"]

_BOXES = "\n    UNION ALL ".join(
    f"SELECT ST_Extent(t.geom) AS box FROM {layer.table} t "  # noqa: S608 (registry names)
    f"WHERE t.deleted_at IS NULL AND {layer.where}"
    for layer in LAYERS
)
_EXTENT_SQL = f"""
WITH boxes AS (
    {_BOXES}
)
SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e)
FROM (SELECT ST_Extent(box) AS e FROM boxes) x
"""  # noqa: S608


def data_bounds(
    conn: Connection,
    counters: Mapping[str, int],
    cache: TileCache | None = None,
    *,
    max_km: float = 0.0,
) -> list[float] | None:
    """``[west, south, east, north]`` of the mapped area, or None when nothing is mapped.

    The mapped area is the settlements within ``max_km`` of their median centre
    (0: every settlement); without settlements, every live public feature. The
    scan (a fraction of a second over a million structures) is remembered in
    ``cache`` with the change counters, so it runs again only after an edit.
    """
    stamp = tuple(counters.get(layer.name, 0) for layer in LAYERS)
    if cache is not None and cache.bounds is not None and cache.bounds[0] == stamp:
        return cache.bounds[1]
    bounds = mapped_area(conn, max_km=max_km)
    if bounds is None:
        row = conn.execute(text(_EXTENT_SQL)).one()
        bounds = None if row[0] is None else [round(float(v), 6) for v in row]
    if cache is not None:
        cache.bounds = (stamp, bounds)
    return bounds


def tilejson(
    conn: Connection,
    *,
    tiles_url: str,
    max_zoom: int,
    cache: TileCache | None = None,
    name: str = "Makazi",
    max_km: float = 0.0,
) -> dict[str, Any]:
    """A TileJSON 3.0.0 document for the tile endpoint.

    Parameters
    ----------
    tiles_url
        The absolute tile URL template, with ``{z}/{x}/{y}``.
    max_zoom
        The deepest zoom the endpoint answers.
    cache
        Where the data bounds are remembered between edits.
    max_km
        How far from the settlements' median centre a settlement may lie and
        still count in the bounds (``max_km_from_settlements``; 0: all).
    """
    counters = change_counters(conn)
    bounds = data_bounds(conn, counters, cache, max_km=max_km)
    west, south, east, north = bounds or [-180.0, -85.051129, 180.0, 85.051129]
    centre_zoom = 13 if bounds else 0
    return {
        "tilejson": "3.0.0",
        "name": name,
        "description": "Settlements, structures, facilities and public GPS traces",
        "version": "1.0.0",
        "scheme": "xyz",
        "tiles": [tiles_url],
        "minzoom": 0,
        "maxzoom": max_zoom,
        "bounds": [west, south, east, north],
        "center": [round((west + east) / 2, 6), round((south + north) / 2, 6), centre_zoom],
        "vector_layers": vector_layers(max_zoom),
    }


def vector_layers(max_zoom: int) -> list[dict[str, Any]]:
    """TileJSON's ``vector_layers``: each layer's fields and zoom range."""
    return [
        {
            "id": layer.name,
            "description": layer.description,
            "minzoom": layer.minzoom,
            "maxzoom": max_zoom,
            "fields": {prop: kind for prop, _, kind in layer.columns},
        }
        for layer in LAYERS
    ]
