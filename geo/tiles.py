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

import gzip
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, text

try:  # ISA-L's gzip is ~4x faster than zlib's at the same ratio (same gzip format)
    from isal.igzip import compress as _gzip_compress
except ImportError:  # pragma: no cover - isal is a dependency; the stdlib is the fallback
    from gzip import compress as _gzip_compress  # type: ignore[assignment]

from geo.errors import InvalidInput
from geo.privacy import PERSONAL_HOUSEHOLD_FIELDS

log = logging.getLogger("makazi.tiles")

__all__ = [
    "LAYERS",
    "PRIVATE_FIELDS",
    "TILE_PLANNER_SQL",
    "Tile",
    "TileCache",
    "TileLayer",
    "cache_key",
    "change_counters",
    "check_tile",
    "data_bounds",
    "extent_at",
    "get_tile",
    "layers_at",
    "make_tile",
    "render_tile",
    "tile_sql",
    "tilejson",
]


@dataclass(frozen=True)
class TileLayer:
    """One MVT layer: a public collection and the columns a map needs.

    Attributes
    ----------
    name
        Layer name in the tile (the collection name).
    table
        Table it is read from.
    minzoom
        First zoom at which the layer is drawn.
    columns
        ``(property, SQL expression over alias t, TileJSON type)`` at full detail.
    overview_columns
        The smaller set sent below ``detail_zoom`` (None: always ``columns``).
    detail_zoom
        Zoom from which ``columns`` are sent.
    where
        Extra filter on ``t`` (public traces only); the live-row filter is always added.
    description
        For TileJSON.
    """

    name: str
    table: str
    minzoom: int
    columns: tuple[tuple[str, str, str], ...]
    overview_columns: tuple[tuple[str, str, str], ...] | None = None
    detail_zoom: int = 0
    where: str = "TRUE"
    description: str = ""

    def columns_at(self, z: int) -> tuple[tuple[str, str, str], ...]:
        """The columns sent at zoom ``z``."""
        if self.overview_columns is not None and z < self.detail_zoom:
            return self.overview_columns
        return self.columns


_ID = ("id", "t.id", "Number")
_VERSION = ("version", "t.version", "Number")

LAYERS: tuple[TileLayer, ...] = (
    TileLayer(
        name="settlements",
        table="settlements",
        minzoom=0,
        columns=(
            _ID,
            _VERSION,
            ("name", "t.name", "String"),
            ("status", "t.status", "String"),
            ("county", "t.county", "String"),
            ("ward", "t.ward", "String"),
        ),
        description="Settlement boundaries, by status",
    ),
    TileLayer(
        name="traces",
        table="traces",
        minzoom=10,
        columns=(
            _ID,
            ("name", "t.name", "String"),
            ("length_m", "round(t.length_m::numeric, 1)::float8", "Number"),
            ("points", "t.points", "Number"),
            (
                "started_at",
                "to_char(t.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
                "String",
            ),
        ),
        where="t.visibility = 'public' AND t.geom IS NOT NULL",
        description="Public GPS traces (cleaned lines)",
    ),
    TileLayer(
        name="structures",
        table="structures",
        minzoom=14,
        columns=(
            _ID,
            _VERSION,
            ("settlement_id", "t.settlement_id", "Number"),
            ("structure_number", "t.structure_number", "String"),
            ("use", "t.use", "String"),
            ("storeys", "t.storeys", "Number"),
            ("households", "t.households", "Number"),
            ("wall_material", "t.wall_material", "String"),
            ("roof_material", "t.roof_material", "String"),
        ),
        overview_columns=(_ID, ("use", "t.use", "String")),
        detail_zoom=15,
        description="Structure footprints, by use (id and use only at zoom 14)",
    ),
    TileLayer(
        name="facilities",
        table="facilities",
        minzoom=12,
        columns=(
            _ID,
            _VERSION,
            ("settlement_id", "t.settlement_id", "Number"),
            ("type", "t.type", "String"),
            ("condition", "t.condition", "String"),
            ("name", "t.name", "String"),
        ),
        description="Shared facilities (water points, toilets, schools, clinics, drainage, roads)",
    ),
)

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
    """Raise :class:`InvalidInput` (400) unless z/x/y name a tile.

    >>> check_tile(3, 7, 0, max_zoom=20)
    >>> check_tile(3, 8, 0, max_zoom=20)
    Traceback (most recent call last):
    ...
    geo.errors.InvalidInput: x must be between 0 and 7 at zoom 3 (got 8)
    """
    if not 0 <= z <= max_zoom:
        raise InvalidInput(f"z must be between 0 and {max_zoom} (got {z})", status=400)
    last = (1 << z) - 1
    if not 0 <= x <= last:
        raise InvalidInput(f"x must be between 0 and {last} at zoom {z} (got {x})", status=400)
    if not 0 <= y <= last:
        raise InvalidInput(f"y must be between 0 and {last} at zoom {z} (got {y})", status=400)


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


def change_counters(conn: Connection) -> dict[str, int]:
    """The change counter of every tiled collection (bumped at each commit that edits it)."""
    rows = conn.execute(text("SELECT collection, counter FROM tile_changes")).all()
    return {str(name): int(counter) for name, counter in rows}


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


@dataclass(frozen=True)
class Tile:
    """A built tile, gzip-compressed, with its strong validator.

    Attributes
    ----------
    gzipped
        The gzip-compressed MVT (empty when the tile holds no feature).
    etag
        Hash of the uncompressed MVT; callers add a suffix per content coding.
    size
        Length of the uncompressed MVT.
    """

    gzipped: bytes
    etag: str
    size: int

    @property
    def empty(self) -> bool:
        """Whether no layer has a feature in this tile."""
        return self.size == 0

    def raw(self) -> bytes:
        """The uncompressed MVT."""
        return gzip.decompress(self.gzipped) if self.gzipped else b""


def make_tile(mvt: bytes, *, level: int = 1) -> Tile:
    """Compress and hash MVT bytes.

    >>> make_tile(b"").empty
    True
    >>> make_tile(b"abc").raw()
    b'abc'
    """
    digest = hashlib.blake2b(mvt, digest_size=16).hexdigest()
    packed = _gzip_compress(mvt, level, mtime=0) if mvt else b""
    return Tile(gzipped=packed, etag=digest, size=len(mvt))


class _Flight:
    """A tile being built: waiters block on ``done`` and then read ``tile``."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.tile: Tile | None = None


class TileCache:
    """A thread-safe LRU of tiles bounded by the total bytes it holds.

    Parameters
    ----------
    max_bytes
        Upper bound of the compressed bytes kept; 0 disables caching.  A tile
        larger than an eighth of the bound is never kept, so one huge tile
        cannot flush the rest.

    Examples
    --------
    >>> cache = TileCache(max_bytes=10_000)
    >>> cache.put(("a",), make_tile(b"x" * 10))
    >>> cache.get(("a",)).raw()
    b'xxxxxxxxxx'
    >>> cache.get(("b",)) is None
    True
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, max_bytes)
        self._entries: OrderedDict[tuple[Any, ...], Tile] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.bounds: tuple[tuple[int, ...], list[float] | None] | None = None
        self._flights: dict[tuple[Any, ...], _Flight] = {}

    @staticmethod
    def _cost(tile: Tile) -> int:
        return len(tile.gzipped) + 200

    @property
    def size_bytes(self) -> int:
        """Bytes currently held."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[Any, ...]) -> Tile | None:
        """The cached tile for ``key`` (and mark it recently used), or None."""
        with self._lock:
            tile = self._entries.get(key)
            if tile is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return tile

    def put(self, key: tuple[Any, ...], tile: Tile) -> None:
        """Keep ``tile`` under ``key``, evicting the least recently used beyond the bound."""
        cost = self._cost(tile)
        if cost * 8 > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= self._cost(old)
            self._entries[key] = tile
            self._bytes += cost
            while self._bytes > self.max_bytes and self._entries:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= self._cost(evicted)

    def get_or_build(
        self, key: tuple[Any, ...], build: Callable[[], Tile], *, wait_s: float = 30.0
    ) -> Tile:
        """The cached tile for ``key``, or build it once however many ask at the same time.

        The first caller builds; callers that ask for the same key meanwhile
        wait (up to ``wait_s``) for its tile instead of running the same
        query again, so an edit followed by many map views costs one render
        per tile.  If the builder fails, each waiter builds for itself.
        """
        tile = self.get(key)
        if tile is not None:
            return tile
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            flight.done.wait(wait_s)
            return flight.tile if flight.tile is not None else build()
        try:
            tile = build()
            flight.tile = tile
            self.put(key, tile)
            return tile
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self.bounds = None


def cache_key(z: int, x: int, y: int, counters: Mapping[str, int]) -> tuple[Any, ...]:
    """The cache key of a tile: its address and the counters of the layers drawn there.

    >>> cache_key(13, 1, 2, {"settlements": 4, "structures": 9, "facilities": 1, "traces": 0})
    (13, 1, 2, 4, 0, 1)
    """
    return (z, x, y, *(counters.get(layer.name, 0) for layer in layers_at(z)))


def get_tile(
    conn: Connection,
    *,
    z: int,
    x: int,
    y: int,
    cache: TileCache,
    max_zoom: int,
    gzip_level: int = 1,
    wait_s: float = 30.0,
    counters: Mapping[str, int] | None = None,
) -> Tile:
    """The tile at z/x/y, from the cache when no layer drawn there has changed.

    The counters are read first (or taken from a :class:`ChangeFeed`, which
    only ever lags the database), before the connection renders a miss, so a
    tile is never stored under a counter newer than the data it shows.

    Raises
    ------
    InvalidInput
        (400) when z/x/y is outside the tile pyramid.
    """
    check_tile(z, x, y, max_zoom=max_zoom)
    key = cache_key(z, x, y, counters if counters is not None else change_counters(conn))

    def build() -> Tile:
        return make_tile(render_tile(conn, z=z, x=x, y=y), level=gzip_level)

    return cache.get_or_build(key, build, wait_s=wait_s)


_EXTENT_SQL = """
WITH boxes AS (
    SELECT ST_Extent(geom) AS box FROM settlements WHERE deleted_at IS NULL
    UNION ALL SELECT ST_Extent(geom) FROM facilities WHERE deleted_at IS NULL
    UNION ALL SELECT ST_Extent(geom) FROM traces
        WHERE deleted_at IS NULL AND visibility = 'public' AND geom IS NOT NULL
    UNION ALL SELECT ST_Extent(geom) FROM structures WHERE deleted_at IS NULL
)
SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e)
FROM (SELECT ST_Extent(box) AS e FROM boxes) x
"""


def data_bounds(
    conn: Connection, counters: Mapping[str, int], cache: TileCache | None = None
) -> list[float] | None:
    """``[west, south, east, north]`` of every live public feature, or None when empty.

    The scan (a fraction of a second over a million structures) is remembered
    in ``cache`` with the change counters, so it runs again only after an edit.
    """
    stamp = tuple(counters.get(layer.name, 0) for layer in LAYERS)
    if cache is not None and cache.bounds is not None and cache.bounds[0] == stamp:
        return cache.bounds[1]
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
    """
    counters = change_counters(conn)
    bounds = data_bounds(conn, counters, cache)
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
        "vector_layers": [
            {
                "id": layer.name,
                "description": layer.description,
                "minzoom": layer.minzoom,
                "maxzoom": max_zoom,
                "fields": {prop: kind for prop, _, kind in layer.columns},
            }
            for layer in LAYERS
        ],
    }


class ChangeFeed:
    """The layers' change counters, kept current by ``LISTEN makazi_tile_changes``.

    One background thread per process holds its own connection, reads the
    counters once, then applies every notification the bump trigger sends at
    commit.  While it is not connected, :meth:`counters` returns None and
    callers read the table instead, so a lost connection costs speed, never
    correctness.

    Parameters
    ----------
    conninfo
        libpq connection string of the database (the primary).
    """

    CHANNEL = "makazi_tile_changes"

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._counters: dict[str, int] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tile-change-feed", daemon=True)

    def start(self) -> ChangeFeed:
        """Start listening in the background."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening (within about a second)."""
        self._stop.set()
        self._thread.join(timeout=5)

    def counters(self) -> dict[str, int] | None:
        """The current counters, or None while not listening."""
        with self._lock:
            return dict(self._counters) if self._counters is not None else None

    def _set(self, value: dict[str, int] | None) -> None:
        with self._lock:
            self._counters = value

    def _run(self) -> None:
        import psycopg

        backoff = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {self.CHANNEL}")
                    rows = conn.execute("SELECT collection, counter FROM tile_changes").fetchall()
                    self._set({str(name): int(counter) for name, counter in rows})
                    backoff = 0.5
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            name, _, counter = note.payload.partition(" ")
                            with self._lock:
                                if self._counters is not None and counter.isdigit():
                                    current = self._counters.get(name, -1)
                                    self._counters[name] = max(current, int(counter))
            except Exception:
                log.warning("tile change feed lost its connection; reading counters per tile")
            self._set(None)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)
