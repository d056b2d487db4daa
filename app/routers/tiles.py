"""Vector tiles (``/tiles/{z}/{x}/{y}.mvt``) and their TileJSON."""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from app.deps import DbDep, PublicReader, SettingsDep
from app.links import href
from app.preconditions import none_match
from geo.core.errors import BadRequest
from geo.core.feed import ChangeFeed
from geo.tiles.cache import Tile, TileCache, cache_key
from geo.tiles.cache import get_tile as cached_tile
from geo.tiles.documents import TileJson
from geo.tiles.render import check_tile
from geo.tiles.tilejson import tilejson

__all__ = ["router"]

router = APIRouter(tags=["Tiles"])

MVT = "application/vnd.mapbox-vector-tile"
_cache_lock = threading.Lock()


async def get_tile_cache(request: Request, settings: SettingsDep) -> TileCache:
    """The app's tile cache, made on first use with the configured size."""
    cache: TileCache | None = getattr(request.app.state, "tile_cache", None)
    if cache is None:
        with _cache_lock:
            cache = getattr(request.app.state, "tile_cache", None)
            if cache is None:
                cache = TileCache(settings.tile_cache_mb * 1024 * 1024)
                request.app.state.tile_cache = cache
    return cache


TileCacheDep = Annotated[TileCache, Depends(get_tile_cache)]


def _integer(name: str, value: str) -> int:
    """A path segment as a tile coordinate, or a 400 naming it."""
    if not value.isascii() or not value.isdigit() or len(value) > 10:
        raise BadRequest(
            f"{name} must be a non-negative integer (got {value[:20]!r})", slug="bad-tile"
        )
    return int(value)


def _accepts_gzip(request: Request) -> bool:
    for part in request.headers.get("accept-encoding", "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in {"gzip", "*"}:
            return params.replace(" ", "") not in {"q=0", "q=0.0", "q=0.00", "q=0.000"}
    return False


@router.get(
    "/tiles/{z}/{x}/{y}.mvt",
    summary="A Mapbox Vector Tile",
    response_class=Response,
    responses={
        200: {"content": {MVT: {}}, "description": "The tile (gzip when accepted)"},
        204: {"description": "Nothing to draw in this tile"},
        304: {"description": "Not modified (If-None-Match)"},
        400: {"description": "z/x/y outside the tile pyramid"},
    },
)
async def get_tile(
    request: Request,
    db: DbDep,
    settings: SettingsDep,
    cache: TileCacheDep,
    user: PublicReader,
    z: Annotated[str, Path(description="Zoom level", examples=["14"])],
    x: Annotated[str, Path(description="Column, 0 at the west", examples=["9866"])],
    y: Annotated[str, Path(description="Row, 0 at the north", examples=["8251"])],
) -> Response:
    """One tile with a layer per public collection.

    Layers: ``settlements`` (all zooms), ``traces`` (public ones, from zoom
    10), ``facilities`` (from 12), ``structures`` (from 14).  The ``ETag`` is
    strong (a hash of the tile, per content coding); ``If-None-Match`` gets a
    304.  An area with nothing to draw gets 204.
    """
    zi, xi, yi = _integer("z", z), _integer("x", x), _integer("y", y)
    feed: ChangeFeed | None = request.app.state.change_feed
    counters = feed.counters() if feed is not None else None
    tile = None
    if counters is not None:
        # a cached tile under the current counters: answered on the event loop, no database
        check_tile(zi, xi, yi, max_zoom=settings.tiles_max_zoom)
        tile = cache.get(cache_key(zi, xi, yi, counters))
    if tile is None:

        def render() -> Tile:
            with db.read() as conn:
                # The feed's counters are the primary's; a replica may not have replayed
                # those edits yet, so a tile drawn there is keyed by the replica's own.
                return cached_tile(
                    conn,
                    z=zi,
                    x=xi,
                    y=yi,
                    cache=cache,
                    max_zoom=settings.tiles_max_zoom,
                    wait_s=settings.statement_timeout_ms / 1000,
                    counters=counters if db.on_primary(conn) else None,
                )

        tile = await run_in_threadpool(render)
    gzip_ok = _accepts_gzip(request)
    etag = f'"{tile.etag}-gz"' if gzip_ok else f'"{tile.etag}"'
    scope = "public" if settings.public_read and user is None else "private"
    headers = {
        "ETag": etag,
        "Cache-Control": f"{scope}, max-age={settings.tile_max_age_s}",
        "Vary": "Accept-Encoding, Authorization",
    }
    if none_match(request.headers.get("if-none-match"), etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    if tile.empty:
        return Response(status_code=status.HTTP_204_NO_CONTENT, headers=headers)
    if gzip_ok:
        headers["Content-Encoding"] = "gzip"
        return Response(tile.gzipped, media_type=MVT, headers=headers)
    return Response(tile.raw(), media_type=MVT, headers=headers)


@router.get(
    "/tiles/tilejson.json",
    summary="TileJSON 3.0.0 of the vector tiles",
    responses={200: {"model": TileJson, "description": "TileJSON with the data's bounds"}},
)
def get_tilejson(
    request: Request, db: DbDep, settings: SettingsDep, cache: TileCacheDep, user: PublicReader
) -> JSONResponse:
    """TileJSON with ``vector_layers`` (fields, zoom range) and the data's bounds."""
    url = href(request, "/tiles/") + "{z}/{x}/{y}.mvt"
    with db.read() as conn:
        doc = tilejson(
            conn,
            tiles_url=url,
            max_zoom=settings.tiles_max_zoom,
            cache=cache,
            max_km=settings.max_km_from_settlements,
        )
    return JSONResponse(doc, headers={"Cache-Control": "no-cache"})
