"""The field app at ``/field``: its files, its settings, offline packages and edit conflicts.

``/field`` is an installable web app (``manifest.webmanifest``, a service worker
at ``/field/sw.js`` whose scope is ``/field``) for mappers and enumerators on
phones.  The page and its files are static (``app/static/field``); what it needs
from the server beyond the public API is here:

* ``GET /field/config.json``: the GPS accuracy limit and the structure uses;
* ``GET /field/me``: who a token belongs to and their role (the sign-in check);
* ``GET /field/settlements/{id}``: a settlement's package size, before download;
* ``GET /field/settlements/{id}/package``: the package itself (ETag, 304);
* ``GET /field/settlements/{id}/tiles.pmtiles``: its offline map, the vector tiles of
  zooms 14..18 as one PMTiles archive (:mod:`geo.field.tiles`; ETag, 304, Range);
* ``POST /conflicts``, ``GET /conflicts``, ``POST /conflicts/{id}/resolution``:
  edits refused with 412, kept field by field (:mod:`geo.field.conflicts`).
"""

from __future__ import annotations

import threading
from os import PathLike
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Connection

from app.bodies import JsonBody
from app.deps import DbDep, MapperUser, PlannerUser, PublicReader, SettingsDep, ViewerUser
from app.idempotent import IdempotencyKey, idempotent_write
from app.preconditions import NO_STORE, none_match
from app.read_routing import long_stream
from app.routers.web import STATIC, _serve
from app.streaming import PinnedFileResponse
from geo.core.errors import NotFound
from geo.core.idempotency import request_hash
from geo.core.settings import Settings
from geo.field.conflicts import list_conflicts, parse_report, record_conflict, resolve_conflict
from geo.field.package import Package, PackageCache
from geo.field.tiles import TileArchive, TileArchiveStore
from geo.layers.registry import STRUCTURES
from geo.layers.writes import parse_json

__all__ = ["router"]

router = APIRouter(tags=["Field app"])

FIELD = STATIC / "field"
_FILES = {
    "field.js": "text/javascript; charset=utf-8",
    "field.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
    "icon-192.png": "image/png",
    "icon-512.png": "image/png",
}
ObjectId = Annotated[int, Path(ge=1, le=2**62)]


@router.get("/field", include_in_schema=False)
def field_page(request: Request) -> Response:
    """The field app's page (works offline once its service worker is installed)."""
    return _serve(request, FIELD / "index.html", "text/html; charset=utf-8")


@router.get("/field/manifest.webmanifest", include_in_schema=False)
def field_manifest(request: Request) -> Response:
    """The web app manifest (name, icons, start URL and scope ``/field``)."""
    return _serve(request, FIELD / "manifest.webmanifest", "application/manifest+json")


@router.get("/field/sw.js", include_in_schema=False)
def field_service_worker(request: Request) -> Response:
    """The service worker; ``Service-Worker-Allowed`` lets it control ``/field`` itself."""
    response = _serve(request, FIELD / "sw.js", "text/javascript; charset=utf-8")
    response.headers["Service-Worker-Allowed"] = "/field"
    return response


@router.get("/field/config.json", summary="The field app's settings")
def field_config(settings: SettingsDep) -> JSONResponse:
    """``max_accuracy_m`` (a fix worse than this is flagged) and the structure uses."""
    use = next(p for p in STRUCTURES.properties if p.name == "use")
    return JSONResponse(
        {"max_accuracy_m": settings.field_max_accuracy_m, "uses": list(use.enum or ())},
        headers={"Cache-Control": "no-cache"},
    )


@router.get("/field/me", summary="Who the bearer token belongs to, and their role")
def field_me(user: ViewerUser) -> JSONResponse:
    """The field app's sign-in check: 401 for an unknown, revoked or expired token."""
    return JSONResponse({"name": user.name, "role": user.role}, headers=NO_STORE)


def _package(request: Request, db: DbDep, settlement_id: int) -> Package:
    """The settlement's package from the app's cache (one cache per app)."""
    cache = getattr(request.app.state, "field_packages", None)
    if cache is None:
        cache = request.app.state.field_packages = PackageCache()
    with db.read() as conn:
        return cache.get(conn, settlement_id)


_store_lock = threading.Lock()


def _archive(request: Request, db: DbDep, settings: Settings, settlement_id: int) -> TileArchive:
    """The settlement's tile archive from the app's store (built when its data changed)."""
    with _store_lock:
        store = getattr(request.app.state, "field_tiles", None)
        if store is None:
            store = request.app.state.field_tiles = TileArchiveStore(
                settings.data_dir / "field-tiles",
                max_zoom=settings.field_tiles_max_zoom,
                max_tiles=settings.field_tiles_max,
            )
    with db.read() as conn:
        return store.get(conn, settlement_id)


PIN_ATTEMPTS = 3
"""Lookups of an archive replaced (by edits) between its lookup and its pin."""


def _pinned_archive(
    request: Request, db: DbDep, settings: Settings, settlement_id: int, if_none_match: str | None
) -> tuple[TileArchive, PathLike[str] | None]:
    """The archive and a pin of its file for one download (None: the client's copy is current).

    The pin (:meth:`~geo.field.tiles.TileArchiveStore.pin`) keeps the bytes of this ETag
    until the download ends, however many times the archive is replaced meanwhile.
    """
    for _retry in range(PIN_ATTEMPTS - 1):
        archive = _archive(request, db, settings, settlement_id)
        if none_match(if_none_match, archive.etag):
            return archive, None
        try:
            return archive, request.app.state.field_tiles.pin(archive)
        except FileNotFoundError:
            continue  # replaced meanwhile: look it up again
    archive = _archive(request, db, settings, settlement_id)
    if none_match(if_none_match, archive.etag):
        return archive, None
    return archive, request.app.state.field_tiles.pin(archive)


@router.get(
    "/field/settlements/{settlement_id}",
    summary="A settlement's offline package: its size and counts, before downloading it",
)
async def package_info(
    settlement_id: ObjectId, request: Request, db: DbDep, settings: SettingsDep, user: PublicReader
) -> JSONResponse:
    """Sizes and counts of what *Download for offline* fetches: the features and the map.

    ``bytes``, ``etag``, ``href``: the features (the JSON package); ``tiles_bytes``,
    ``tiles``, ``tiles_etag``, ``tiles_href``, ``zooms``: the tile archive;
    ``total_bytes``: both.
    """
    package = await run_in_threadpool(_package, request, db, settlement_id)
    archive = await run_in_threadpool(_archive, request, db, settings, settlement_id)
    return JSONResponse(
        {
            "id": package.settlement_id,
            "name": package.name,
            "bytes": len(package.body),
            "structures": package.structures,
            "facilities": package.facilities,
            "bbox": package.bbox,
            "etag": package.etag,
            "href": str(request.url_for("package_body", settlement_id=settlement_id)),
            "tiles_bytes": archive.bytes,
            "tiles": archive.tiles,
            "zooms": [archive.min_zoom, archive.max_zoom],
            "tiles_etag": archive.etag,
            "tiles_href": str(request.url_for("package_tiles", settlement_id=settlement_id)),
            "total_bytes": len(package.body) + archive.bytes,
        },
        headers={"Cache-Control": "no-cache"},
    )


@router.get(
    "/field/settlements/{settlement_id}/tiles.pmtiles",
    summary="A settlement's offline map: its vector tiles of zooms 14-18 as one PMTiles archive",
    name="package_tiles",
    response_class=Response,
    responses={
        200: {"content": {"application/vnd.pmtiles": {}}, "description": "The archive"},
        206: {"description": "The bytes a Range asked for"},
        304: {"description": "Not modified (If-None-Match)"},
    },
)
async def package_tiles(
    settlement_id: ObjectId,
    request: Request,
    db: DbDep,
    settings: SettingsDep,
    user: PublicReader,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The same tiles as ``/tiles/{z}/{x}/{y}.mvt`` over the settlement's extent.

    Built once per state of the data (the tile change counters); the ``ETag`` is a
    hash of the file.  ``Range`` requests get 206, so a PMTiles reader can read it
    in place.
    """
    archive, pinned = await run_in_threadpool(
        _pinned_archive, request, db, settings, settlement_id, if_none_match
    )
    headers = {"ETag": archive.etag, "Cache-Control": "no-cache"}
    if pinned is None:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    long_stream()  # a finished file on disk: nothing to retry, so not held in memory
    return PinnedFileResponse(pinned, media_type="application/vnd.pmtiles", headers=headers)


@router.get(
    "/field/settlements/{settlement_id}/package",
    summary="A settlement's offline package (boundary, structures, facilities as one JSON)",
    name="package_body",
)
async def package_body(
    settlement_id: ObjectId,
    request: Request,
    db: DbDep,
    user: PublicReader,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The package; ``ETag`` changes with any change to the settlement's features."""
    package = await run_in_threadpool(_package, request, db, settlement_id)
    headers = {"ETag": package.etag, "Cache-Control": "no-cache"}
    if none_match(if_none_match, package.etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(package.body, media_type="application/json", headers=headers)


@router.post(
    "/conflicts",
    status_code=status.HTTP_201_CREATED,
    summary="Report an edit refused with 412: kept with base, theirs and mine, field by field",
)
async def post_conflict(
    user: MapperUser, idempotency_key: IdempotencyKey, body: JsonBody, db: DbDep
) -> Response:
    """Body ``{collection, feature_id, base_version, base, mine}``; the server adds theirs."""
    collection, feature_id, base_version, base, mine = parse_report(parse_json(body))

    def record(conn: Connection) -> Response:
        stored = record_conflict(
            conn,
            collection=collection,
            feature_id=feature_id,
            base_version=base_version,
            base=base,
            mine=mine,
            user=user,
        )
        return JSONResponse(stored, status_code=status.HTTP_201_CREATED)

    return await idempotent_write(
        db,
        actor=user.name,
        key=idempotency_key,
        scope="POST /conflicts",
        fingerprint=request_hash(body),
        write=record,
    )


@router.get("/conflicts", summary="Reported edit conflicts (planner+), newest first")
def get_conflicts(
    user: PlannerUser,
    db: DbDep,
    collection: Annotated[str | None, Query(max_length=100)] = None,
    feature_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
) -> JSONResponse:
    """Each with ``fields`` (``{name: {base, theirs, mine}}``) and its ``resolution``."""
    with db.read() as conn:
        records = list_conflicts(conn, collection=collection, feature_id=feature_id)
    return JSONResponse({"conflicts": records}, headers=NO_STORE)


@router.post(
    "/conflicts/{conflict_id}/resolution",
    summary="Record which side was kept (mine or theirs)",
)
async def post_resolution(
    conflict_id: ObjectId, user: MapperUser, body: JsonBody, db: DbDep
) -> JSONResponse:
    """Body ``{"resolution": "mine" | "theirs"}``; by who reported it, or a planner+."""
    fields = parse_json(body)
    resolution = fields.get("resolution") if isinstance(fields, dict) else None

    def work() -> JSONResponse:
        with db.begin(actor=user.name) as conn:
            record = resolve_conflict(conn, conflict_id, resolution, user)
        return JSONResponse(record, headers=NO_STORE)

    return await run_in_threadpool(work)


@router.get("/field/{name}", include_in_schema=False)
def field_file(request: Request, name: str) -> Response:
    """One of the app's files (a fixed list)."""
    media_type = _FILES.get(name)
    if media_type is None:
        raise NotFound(f"no field app file {name}")
    return _serve(request, FIELD / name, media_type)
