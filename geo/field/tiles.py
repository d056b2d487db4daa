"""A settlement's offline map: Makazi's own vector tiles over its extent, as one PMTiles file.

The field app draws these tiles with no network.  Every tile is the same MVT
that ``/tiles/{z}/{x}/{y}.mvt`` serves (:func:`geo.tiles.render.render_tile`:
the public layers and fields of the registry, so no personal field can be in
one), for each tile of zooms ``min_zoom..max_zoom`` (14..18) that touches the
settlement's bounding box; tiles with nothing to draw are left out.  They are
written gzip-compressed, ordered by tile id, into one PMTiles v3 archive by the
``pmtiles`` package's writer (the format's reference Python implementation,
maintained with the format itself), so the phone reads a tile with one slice of
one file and the server streams it with Range requests.

An archive is built once per settlement and state of the data: it is keyed by
the layers' change counters (``tile_changes``, bumped at each commit that edits
a tiled collection, the counters the tile cache uses) with the settlement's own
stamp and the database's identity, kept on disk under
``data_dir/field-tiles`` as ``{settlement}-{key}.pmtiles`` (so it outlives a
restart), and replaced when a counter moves (the one before is kept until the next
change, so a download running meanwhile is not cut; older ones are deleted).  Its
strong ETag is a hash of its bytes, so a rebuild that changed nothing in the
settlement's area keeps the ETag and the phone's copy stays current.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import math
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pmtiles.reader import MmapSource, Reader
from pmtiles.tile import Compression, TileType, zxy_to_tileid
from pmtiles.writer import Writer
from sqlalchemy import Connection, text

from geo.core.errors import NotFound, TooLarge
from geo.field.package import package_stamp, settlement_head
from geo.tiles.cache import make_tile
from geo.tiles.feed import change_counters
from geo.tiles.render import LAYERS, render_tile
from geo.tiles.tilejson import vector_layers

__all__ = ["TileArchive", "TileArchiveStore", "build_archive", "tiles_covering"]

FORMAT = "1"
"""Bumped when what goes into an archive changes, so old files are rebuilt."""

_EMPTY_GZIP = gzip.compress(b"", mtime=0)
"""An empty MVT (no layer), gzipped: the one tile of a settlement with nothing to draw."""


@dataclass(frozen=True)
class TileArchive:
    """A built archive on disk: where it is, its strong ETag, size and tile count."""

    settlement_id: int
    path: Path
    etag: str
    bytes: int
    tiles: int
    min_zoom: int
    max_zoom: int
    bounds: tuple[float, float, float, float]


def _tile_xy(lon: float, lat: float, z: int) -> tuple[int, int]:
    """The tile holding ``lon, lat`` at zoom ``z`` (web mercator, clamped to the pyramid)."""
    n = 1 << z
    lat = max(-85.0511287, min(85.0511287, lat))
    x = int((lon + 180.0) / 360.0 * n)
    rad = math.radians(lat)
    y = int((1.0 - math.asinh(math.tan(rad)) / math.pi) / 2.0 * n)
    return min(max(x, 0), n - 1), min(max(y, 0), n - 1)


def tiles_covering(
    bbox: tuple[float, float, float, float], min_zoom: int, max_zoom: int
) -> Iterator[tuple[int, int, int]]:
    """Every ``(z, x, y)`` touching ``bbox`` (west, south, east, north), zoom by zoom.

    >>> sorted(tiles_covering((36.78, -1.315, 36.79, -1.305), 14, 14))
    [(14, 9865, 8251), (14, 9866, 8251)]
    """
    west, south, east, north = bbox
    for z in range(min_zoom, max_zoom + 1):
        x0, y0 = _tile_xy(west, north, z)
        x1, y1 = _tile_xy(east, south, z)
        for x in range(x0, x1 + 1):
            for y in range(y0, y1 + 1):
                yield z, x, y


def count_tiles(bbox: tuple[float, float, float, float], min_zoom: int, max_zoom: int) -> int:
    """How many tiles :func:`tiles_covering` yields, without listing them."""
    total = 0
    for z in range(min_zoom, max_zoom + 1):
        x0, y0 = _tile_xy(bbox[0], bbox[3], z)
        x1, y1 = _tile_xy(bbox[2], bbox[1], z)
        total += (x1 - x0 + 1) * (y1 - y0 + 1)
    return total


def _e7(value: float) -> int:
    return round(value * 10_000_000)


def build_archive(
    conn: Connection,
    settlement_id: int,
    path: Path,
    *,
    min_zoom: int = 14,
    max_zoom: int = 18,
    max_tiles: int = 20_000,
) -> int:
    """Write the settlement's archive to ``path``; the number of tiles in it.

    Raises
    ------
    NotFound
        When the settlement does not exist.
    TooLarge
        When its extent needs more than ``max_tiles`` tiles over the zooms.
    """
    _, bbox = settlement_head(conn, settlement_id)
    needed = count_tiles(bbox, min_zoom, max_zoom)
    if needed > max_tiles:
        raise TooLarge(
            f"settlement {settlement_id} covers {needed} tiles at zooms {min_zoom}-{max_zoom}, "
            f"more than an offline package holds (MAKAZI_FIELD_TILES_MAX={max_tiles})"
        )
    addresses = sorted(
        (zxy_to_tileid(z, x, y), z, x, y) for z, x, y in tiles_covering(bbox, min_zoom, max_zoom)
    )
    written = 0
    with path.open("wb") as out:
        writer = Writer(out)
        for tile_id, z, x, y in addresses:
            mvt = render_tile(conn, z=z, x=x, y=y)
            if mvt:
                writer.write_tile(tile_id, make_tile(mvt).gzipped)
                written += 1
        if not written:  # the format needs one entry; an empty tile draws nothing
            writer.write_tile(addresses[0][0], _EMPTY_GZIP)
            written = 1
        west, south, east, north = bbox
        writer.finalize(
            {
                "tile_type": TileType.MVT,
                "tile_compression": Compression.GZIP,
                "min_lon_e7": _e7(west),
                "min_lat_e7": _e7(south),
                "max_lon_e7": _e7(east),
                "max_lat_e7": _e7(north),
                "center_zoom": min(max_zoom, max(min_zoom, 16)),
                "center_lon_e7": _e7((west + east) / 2),
                "center_lat_e7": _e7((south + north) / 2),
            },
            {
                "name": f"Makazi settlement {settlement_id}",
                "format": "pbf",
                "attribution": "Makazi",
                "vector_layers": vector_layers(max_zoom),
            },
        )
    return written


def _digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f'"{h.hexdigest()}"'


def _describe(settlement_id: int, path: Path) -> TileArchive:
    with path.open("rb") as f:
        header = Reader(MmapSource(f)).header()
    return TileArchive(
        settlement_id=settlement_id,
        path=path,
        etag=_digest(path),
        bytes=path.stat().st_size,
        tiles=int(header["addressed_tiles_count"]),
        min_zoom=int(header["min_zoom"]),
        max_zoom=int(header["max_zoom"]),
        bounds=(
            header["min_lon_e7"] / 1e7,
            header["min_lat_e7"] / 1e7,
            header["max_lon_e7"] / 1e7,
            header["max_lat_e7"] / 1e7,
        ),
    )


PIN_MAX_AGE_S = 86_400
"""A download's hard link older than this (by its last link change) was left behind."""


class TileArchiveStore:
    """Built archives on disk, one current file per settlement, each built once.

    Parameters
    ----------
    folder
        Where the files are kept (made when missing).
    min_zoom, max_zoom
        The zooms each archive holds.
    max_tiles
        The most tiles one archive may need (:class:`~geo.core.errors.TooLarge` beyond).
    """

    def __init__(
        self, folder: Path, *, min_zoom: int = 14, max_zoom: int = 18, max_tiles: int = 20_000
    ) -> None:
        self.folder = folder
        self.min_zoom = min_zoom
        self.max_zoom = max_zoom
        self.max_tiles = max_tiles
        self._known: dict[int, tuple[str, TileArchive]] = {}
        self._lock = threading.Lock()
        self._building: dict[int, threading.Lock] = {}

    def key(self, counters: Mapping[str, int], settlement: str, database: str) -> str:
        """The file key: the layers' change counters, the settlement's own stamp, the database.

        The counters alone restart with a new database, which may share ``data_dir``
        with the old one (a demo loaded again); the settlement's stamp (row counts,
        versions and latest change of its features) and the database's identity keep
        an archive of other data from ever matching.
        """
        stamp = ",".join(f"{layer.name}={counters.get(layer.name, 0)}" for layer in LAYERS)
        stamp += f";{settlement};{database};{self.min_zoom}-{self.max_zoom};{FORMAT}"
        return hashlib.blake2b(stamp.encode(), digest_size=8).hexdigest()

    def get(self, conn: Connection, settlement_id: int) -> TileArchive:
        """The settlement's current archive, built when the data changed since the last.

        The counters are read on ``conn`` before the tiles, so an archive is never
        filed under counters newer than the data it holds.
        """
        own = package_stamp(conn, settlement_id)
        if own is None:
            raise NotFound(f"settlement {settlement_id} does not exist")
        database = conn.execute(
            text("SELECT oid || '@' || datname FROM pg_database WHERE datname = current_database()")
        ).scalar_one()
        key = self.key(change_counters(conn), own, str(database))
        with self._lock:
            held = self._known.get(settlement_id)
            if held is not None and held[0] == key and held[1].path.exists():
                return held[1]
            building = self._building.setdefault(settlement_id, threading.Lock())
        with building:  # one build per settlement at a time; the others wait for it
            path = self.folder / f"{settlement_id}-{key}.pmtiles"
            if not path.exists():
                self.folder.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".part")
                os.close(fd)
                try:
                    build_archive(
                        conn,
                        settlement_id,
                        Path(tmp),
                        min_zoom=self.min_zoom,
                        max_zoom=self.max_zoom,
                        max_tiles=self.max_tiles,
                    )
                    os.replace(tmp, path)
                finally:
                    Path(tmp).unlink(missing_ok=True)
            archive = _describe(settlement_id, path)
            with self._lock:
                previous = self._known.get(settlement_id)
                self._known[settlement_id] = (key, archive)
            # the previous file stays until the next change: a download of it may be running
            keep = {path, previous[1].path if previous else path}
            for old in self.folder.glob(f"{settlement_id}-*.pmtiles"):
                if old not in keep:
                    old.unlink(missing_ok=True)
            return archive

    def pin(self, archive: TileArchive) -> Path:
        """A hard link to ``archive``'s file that only one download uses; the caller removes it.

        A rebuild deletes the archive before the last but one, and a download opens its
        file only once the response starts: the link keeps the bytes the download was
        promised (its ETag and length) until it ends, whatever is replaced meanwhile.
        Links left by a process that was killed are removed after :data:`PIN_MAX_AGE_S`.

        Raises
        ------
        FileNotFoundError
            When ``archive`` was replaced and deleted already (ask :meth:`get` again).
        """
        pins = self.folder / "downloads"
        pins.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for old in pins.glob("*.pmtiles"):
            with contextlib.suppress(OSError):
                if now - old.stat().st_ctime > PIN_MAX_AGE_S:
                    old.unlink()
        pinned = pins / f"{uuid.uuid4().hex}.pmtiles"
        os.link(archive.path, pinned)
        return pinned
