"""The tile cache: gzipped tiles keyed by address and the layers' change counters."""

from __future__ import annotations

import gzip
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

try:  # ISA-L's gzip is ~4x faster than zlib's at the same ratio (same gzip format)
    from isal.igzip import compress as _gzip_compress
except ImportError:  # pragma: no cover - isal is a dependency; the stdlib is the fallback
    from gzip import compress as _gzip_compress  # type: ignore[assignment]


from geo.tiles.feed import change_counters
from geo.tiles.render import check_tile, layers_at, render_tile

__all__ = ["cache_key", "get_tile", "make_tile", "Tile", "TileCache"]


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

    The counters are read first (or taken from a :class:`~geo.core.feed.ChangeFeed`, which
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
