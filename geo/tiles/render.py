"""Mapbox Vector Tiles built by PostGIS, with a bounded change-aware cache.

One SQL statement builds a whole tile: for each layer drawn at the tile's zoom
a sub-select clips and quantises the features with ``ST_AsMVTGeom`` and packs
them with ``ST_AsMVT``; the layers' bytes are concatenated (an MVT is a list
of layers, so concatenation is a valid tile).  Python only gzips the bytes,
hashes them for the ``ETag`` and keeps them in a least-recently-used cache.

The layers and their columns come from :data:`LAYERS`, a fixed registry: no
identifier in the SQL comes from a request, and no personal field (household
names, phones, trace owners) is in the registry, so none can reach a tile.

Cache entries are keyed by the tile and by the change counters of the layers
drawn at its zoom (table ``tile_changes``, bumped at commit by triggers of
migration 0007), so a committed edit makes every cached tile of that layer
unreachable at once; the LRU bound then evicts them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, text

from geo.core.errors import BadRequest
from geo.core.privacy import PERSONAL_HOUSEHOLD_FIELDS
from geo.layers.registry import COLLECTIONS, Collection, TileZoom

__all__ = [
    "LAYERS",
    "PRIVATE_FIELDS",
    "TILE_PLANNER_SQL",
    "check_tile",
    "extent_at",
    "layers_at",
    "render_tile",
    "tile_sql",
    "TileLayer",
]

log = logging.getLogger("makazi.tiles")


@dataclass(frozen=True)
class TileLayer:
    """One MVT layer: a collection of the registry and its :class:`TileZoom`.

    Everything but the zooms comes from the collection: the table, the
    properties (their SQL and TileJSON type) and which rows anyone may see.
    """

    collection: Collection
    zoom: TileZoom

    @property
    def name(self) -> str:
        """Layer name in the tile (the collection name)."""
        return self.collection.name

    @property
    def table(self) -> str:
        """Table it is read from."""
        return self.collection.table.name

    @property
    def minzoom(self) -> int:
        """First zoom at which the layer is drawn."""
        return self.zoom.minzoom

    @property
    def description(self) -> str:
        """For TileJSON."""
        return self.zoom.description

    @property
    def where(self) -> str:
        """Which rows anyone may see (the live-row filter is always added)."""
        return self.collection.public_sql("t")

    @property
    def columns(self) -> tuple[tuple[str, str, str], ...]:
        """``(property, SQL expression over alias t, TileJSON type)`` at full detail."""
        return self._columns(self.zoom.fields)

    def columns_at(self, z: int) -> tuple[tuple[str, str, str], ...]:
        """The columns sent at zoom ``z``."""
        if self.zoom.overview_fields is not None and z < self.zoom.detail_zoom:
            return self._columns(self.zoom.overview_fields)
        return self.columns

    def _columns(self, fields: tuple[str, ...]) -> tuple[tuple[str, str, str], ...]:
        columns = [("id", "t.id", "Number")]
        for name in fields:
            prop = self.collection.find(name)
            assert prop is not None, f"{self.name}.{name} is not a property"
            columns.append((name, prop.tile_sql or f"t.{name}", prop.tile_type))
        return tuple(columns)


LAYERS: tuple[TileLayer, ...] = tuple(
    sorted(
        (TileLayer(c, c.tile) for c in COLLECTIONS.values() if c.tile is not None),
        key=lambda layer: layer.minzoom,
    )
)
"""The tile layers, from the registry's collections, coarsest first."""

#: Personal or owner fields that must never be in a tile (checked by the tests).
PRIVATE_FIELDS = PERSONAL_HOUSEHOLD_FIELDS | {"owner", "created_by", "updated_by"}


def extent_at(z: int) -> int:
    """Tile extent (grid units per side) at zoom ``z``.

    Dense settlements hold ~100,000 structures in one zoom-14 tile; a coarser
    grid there (one unit is about a screen pixel) keeps the tile small, and
    full precision from zoom 16 keeps footprints exact when people click them.

    >>> extent_at(14), extent_at(15), extent_at(16)
    (512, 1024, 4096)
    """
    if z <= 14:
        return 512
    if z == 15:
        return 1024
    return 4096


def layers_at(z: int) -> tuple[TileLayer, ...]:
    """The layers drawn at zoom ``z``.

    >>> [layer.name for layer in layers_at(13)]
    ['settlements', 'traces', 'facilities']
    """
    return tuple(layer for layer in LAYERS if z >= layer.minzoom)


def check_tile(z: int, x: int, y: int, *, max_zoom: int) -> None:
    """Raise :class:`~geo.core.errors.BadRequest` (400) unless z/x/y name a tile.

    >>> check_tile(3, 7, 0, max_zoom=20)
    >>> check_tile(3, 8, 0, max_zoom=20)
    Traceback (most recent call last):
    ...
    geo.core.errors.BadRequest: x must be between 0 and 7 at zoom 3 (got 8)
    """
    if not 0 <= z <= max_zoom:
        raise BadRequest(f"z must be between 0 and {max_zoom} (got {z})")
    last = (1 << z) - 1
    if not 0 <= x <= last:
        raise BadRequest(f"x must be between 0 and {last} at zoom {z} (got {x})")
    if not 0 <= y <= last:
        raise BadRequest(f"y must be between 0 and {last} at zoom {z} (got {y})")


@lru_cache(maxsize=64)
def tile_sql(z: int) -> str:
    """The statement that builds a tile at zoom ``z`` (psycopg parameters ``%(z)s`` etc.).

    The text depends on the zoom only through which layers and columns are
    drawn and the grid extent, so it is built once per zoom.  Identifiers come
    from :data:`LAYERS`; every value is a bound parameter.
    """
    extent = extent_at(z)
    buffer = extent // 64
    # The envelope is written out in each layer rather than shared through a
    # CTE: with the tile's numbers known the planner folds it to a constant,
    # estimates the index hit count and picks a bitmap scan for dense tiles.
    tile = "ST_TileEnvelope(%(z)s, %(x)s, %(y)s)"
    bbox = f"ST_Transform(ST_TileEnvelope(%(z)s, %(x)s, %(y)s, margin => {buffer / extent}), 4326)"
    parts = []
    for layer in layers_at(z):
        cols = ", ".join(f"{expr} AS {prop}" for prop, expr, _ in layer.columns_at(z))
        # No "WHERE geom IS NOT NULL" around the sub-select: ST_AsMVT skips the
        # features that clip away, and such a filter would run ST_AsMVTGeom twice.
        parts.append(  # identifiers from the fixed LAYERS registry, values bound
            f"""(SELECT coalesce(ST_AsMVT(q, '{layer.name}', {extent}, 'geom', 'fid'), ''::bytea)
   FROM (SELECT t.id AS fid, {cols},
                ST_AsMVTGeom(ST_Transform(t.geom, 3857), {tile}, {extent}, {buffer}, true)
                    AS geom
         FROM {layer.table} t
         WHERE t.deleted_at IS NULL AND ({layer.where}) AND t.geom && {bbox}) q)"""  # noqa: S608
        )
    return "SELECT " + ("\n || ".join(parts) if parts else "''::bytea") + " AS mvt"


#: Planner settings for one tile statement (see :func:`render_tile`).
TILE_PLANNER_SQL = (
    "SELECT set_config('max_parallel_workers_per_gather', '0', true), "
    "set_config('plan_cache_mode', 'force_custom_plan', true)"
)


def render_tile(conn: Connection, *, z: int, x: int, y: int) -> bytes:
    """Build the uncompressed MVT for one tile (``b""`` when nothing is there).

    Two planner settings hold for the transaction: no parallel workers
    (gathering ST_AsMVT partial results costs more than it saves at tile
    sizes, and a serial plan returns the same bytes for the same data, so the
    ETag is stable), and a custom plan per tile even when the driver has
    prepared the statement (a generic plan cannot know how many features the
    tile holds, and picks an index scan where a bitmap scan is 2-3x faster).

    The tile is fetched in binary on the connection's psycopg cursor: a
    bytea in text form is twice the size and has to be hex-decoded.
    """
    conn.execute(text(TILE_PLANNER_SQL))
    driver: Any = conn.connection.driver_connection
    with driver.cursor(binary=True) as cursor:
        cursor.execute(tile_sql(z), {"z": z, "x": x, "y": y})
        row = cursor.fetchone()
    return bytes(row[0]) if row and row[0] else b""
