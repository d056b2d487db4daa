"""``/traces``: GPX upload, listing, downloads, edits and perimeter-walk boundaries.

HTTP only: the body is streamed into a bounded spool here (413 as soon as it
passes the limit), everything else is in :mod:`geo.traces`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy import Connection

from app.bodies import JsonBody
from app.deps import CurrentUser, DbDep, MapperUser, PublicReader, SettingsDep
from app.idempotent import IdempotencyKey, idempotent_write
from app.links import href
from app.preconditions import NO_STORE, OptionalVersion, etag, expected_version
from app.read_routing import long_stream
from app.streaming import ClosingStreamingResponse
from geo.core.errors import Unauthorised, UnsupportedMediaType
from geo.core.privacy import Visibility
from geo.core.uploads import BodySpool, MultipartFile, SpooledBody, TooLarge
from geo.layers.writes import parse_json
from geo.traces.boundary import trace_boundary
from geo.traces.documents import TraceList, TraceSummary
from geo.traces.edits import delete_trace, owned_trace, patch_trace, purge_trace
from geo.traces.ingest import TraceLimits, fingerprint, ingest_trace
from geo.traces.reads import (
    get_trace,
    list_traces,
    trace_file,
    trace_file_chunks,
    trace_geojson_chunks,
)

router = APIRouter(tags=["traces"])

#: Declared types a raw GPX body may carry; the bytes decide what it really is.
RAW_TYPES = frozenset(
    {
        "application/gpx+xml",
        "application/gzip",
        "application/x-gzip",
        "application/zip",
        "application/x-zip-compressed",
        "application/octet-stream",
    }
)
MULTIPART_SLACK = 1024 * 1024  # headers, boundaries and small fields around the file
SUFFIX = {
    "application/gpx+xml": ".gpx",
    "application/gzip": ".gpx.gz",
    "application/x-bzip2": ".gpx.bz2",
    "application/zip": ".zip",
}


def _trace_links(request: Request, trace_id: int) -> list[dict[str, str]]:
    return [
        {"href": href(request, f"/traces/{trace_id}"), "rel": "self", "type": "application/json"},
        {
            "href": href(request, f"/traces/{trace_id}/gpx"),
            "rel": "enclosure",
            "type": "application/gpx+xml",
            "title": "the original upload, byte for byte",
        },
        {
            "href": href(request, f"/traces/{trace_id}/geojson"),
            "rel": "alternate",
            "type": "application/geo+json",
            "title": "cleaned lines and waypoints",
        },
    ]


async def _receive(request: Request, settings: SettingsDep) -> SpooledBody:
    """Stream the request body (raw or the multipart ``file`` field) into a spool.

    The limit is ``MAKAZI_MAX_UPLOAD_MB``: past it the upload is a 413 at once.
    """
    limit = settings.max_upload_bytes
    content_type = request.headers.get("content-type", "application/octet-stream")
    media = content_type.split(";", 1)[0].strip().lower()
    declared = request.headers.get("content-length")
    spool = BodySpool(limit=limit)
    if media == "multipart/form-data":
        body_limit = limit + MULTIPART_SLACK
        if declared and declared.isdigit() and int(declared) > body_limit:
            raise TooLarge(limit)
        extractor = MultipartFile(content_type, field="file", spool=spool, body_limit=body_limit)
        async for chunk in request.stream():
            extractor.feed(chunk)
        return extractor.finish()
    if media not in RAW_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type {media!r} is not accepted: send GPX as application/gpx+xml "
            "(or application/gzip, application/zip, application/octet-stream), "
            "or as the field 'file' of multipart/form-data"
        )
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(limit)
    async for chunk in request.stream():
        spool.write(chunk)
    return spool.finish()


GpxUpload = Annotated[SpooledBody, Depends(_receive)]
"""The uploaded GPX bytes (raw body or multipart ``file``), spooled within the limit."""


@router.post(
    "/traces",
    status_code=status.HTTP_201_CREATED,
    summary="Upload a GPX trace (raw body or multipart field 'file'; gzip/zip accepted)",
    responses={
        201: {"model": TraceSummary, "description": "the new trace"},
        200: {
            "model": TraceSummary,
            "description": "the same bytes were uploaded before: the existing trace",
        },
        400: {"description": "not GPX / not XML (with line and column)"},
        413: {"description": "over the size or point limit"},
        415: {"description": "unsupported Content-Type"},
        422: {"description": "no usable point, or a bad parameter"},
    },
)
async def upload_trace(
    user: MapperUser,
    idempotency_key: IdempotencyKey,
    body: GpxUpload,
    request: Request,
    db: DbDep,
    settings: SettingsDep,
    name: Annotated[str | None, Query(max_length=300)] = None,
    visibility: Visibility = Visibility.PRIVATE,
    settlement_id: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    """Store a GPX upload as a trace: ``{id, name, visibility, stats, dropped, warnings}``.

    201 for a new trace; 200 with the existing one when the same bytes came
    from the same user before.
    """
    limits = TraceLimits.from_settings(settings)

    def ingest(conn: Connection) -> Response:
        result = ingest_trace(
            conn,
            owner=user.name,
            body=body,
            name=name,
            visibility=visibility,
            settlement_id=settlement_id,
            limits=limits,
            last=idempotency_key is None,  # nothing to remember after the trace
        )
        payload = json.loads(result.body)
        payload["links"] = _trace_links(request, result.trace_id)
        headers = {
            "Location": href(request, f"/traces/{result.trace_id}"),
            "ETag": etag(int(payload["version"])),
        }
        code = status.HTTP_201_CREATED if result.created else status.HTTP_200_OK
        return JSONResponse(payload, status_code=code, headers=headers)

    try:
        return await idempotent_write(
            db,
            actor=user.name,
            key=idempotency_key,
            scope="POST /traces",
            fingerprint=fingerprint(body, name, visibility, settlement_id),
            write=ingest,
            defer_actor=True,  # sent with the small upload's store (geo/traces/ingest.py)
        )
    finally:
        body.close()


@router.get(
    "/traces",
    summary="Traces you may see, newest first",
    responses={200: {"model": TraceList, "description": "A page of traces"}},
)
def get_traces(
    request: Request,
    user: PublicReader,
    db: DbDep,
    settings: SettingsDep,
    limit: Annotated[int | None, Query(ge=1)] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    owner: Annotated[str | None, Query(max_length=200)] = None,
    settlement_id: Annotated[int | None, Query(ge=1)] = None,
    visibility: Visibility | None = None,
) -> Response:
    """``{"traces": [...], "numberReturned": n, "links": [...]}`` with a ``next`` link."""
    size = min(limit or settings.items_default_limit, settings.items_max_limit)
    with db.read() as conn:
        rows, more = list_traces(
            conn,
            user=user,
            limit=size,
            offset=offset,
            owner=owner,
            settlement_id=settlement_id,
            visibility=visibility,
        )
    for row in rows:
        row["links"] = _trace_links(request, row["id"])
    query: dict[str, Any] = {
        "limit": size,
        "owner": owner,
        "settlement_id": settlement_id,
        "visibility": visibility,
    }
    links = [{"href": href(request, "/traces", **query, offset=offset), "rel": "self"}]
    if more:
        links.append(
            {
                "href": href(request, "/traces", **query, offset=offset + size),
                "rel": "next",
                "type": "application/json",
            }
        )
    body = {"traces": rows, "numberReturned": len(rows), "links": links}
    return JSONResponse(body, headers=NO_STORE)


@router.get(
    "/traces/{trace_id}",
    summary="One trace's metadata and stats",
    responses={200: {"model": TraceSummary, "description": "The trace"}},
)
def get_one(request: Request, trace_id: int, user: PublicReader, db: DbDep) -> Response:
    """The trace, with its version as ``ETag``; 404 when absent or not visible to you."""
    with db.read() as conn:
        trace = get_trace(conn, trace_id=trace_id, user=user)
    trace["links"] = _trace_links(request, trace_id)
    return JSONResponse(trace, headers={"ETag": etag(trace["version"])})


@router.get(
    "/traces/{trace_id}/gpx",
    summary="The original upload, byte for byte",
    response_class=StreamingResponse,
)
def download_gpx(trace_id: int, user: PublicReader, db: DbDep) -> Response:
    """The bytes as uploaded (GPX, or the gzip/zip it came in), streamed."""
    long_stream()  # up to MAKAZI_MAX_UPLOAD_MB: sent as read, not held whole
    with db.read() as conn:
        meta = trace_file(conn, trace_id=trace_id, user=user)

    def chunks() -> Iterator[bytes]:
        with db.read() as conn:
            yield from trace_file_chunks(conn, trace_id=trace_id, size=meta["size"])

    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in meta["name"])[:80] or "trace"
    filename = safe + SUFFIX.get(meta["content_type"], ".gpx")
    return ClosingStreamingResponse(
        chunks(),
        media_type=meta["content_type"],
        headers={
            "Content-Length": str(meta["size"]),
            "Content-Disposition": f'attachment; filename="{filename}"',
            "ETag": f'"{meta["sha256"]}"',
        },
    )


@router.get(
    "/traces/{trace_id}/geojson",
    summary="The cleaned geometry: segment lines and waypoints",
    response_class=StreamingResponse,
)
def download_geojson(trace_id: int, user: PublicReader, db: DbDep) -> Response:
    """A FeatureCollection built by PostGIS, streamed."""
    with db.read() as conn:
        get_trace(conn, trace_id=trace_id, user=user)  # 404 before the stream starts

    def chunks() -> Iterator[bytes]:
        with db.read() as conn:
            yield from trace_geojson_chunks(conn, trace_id=trace_id, user=user)

    return ClosingStreamingResponse(chunks(), media_type="application/geo+json")


@router.delete(
    "/traces/{trace_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a trace (owner or admin); purge=true removes it for good",
)
def remove_trace(
    user: CurrentUser,
    expected: OptionalVersion,
    trace_id: int,
    db: DbDep,
    purge: Annotated[
        bool,
        Query(
            description="remove the trace for good: its bytes, points and lines, and its "
            "history but for one row saying who purged it (also for a soft-deleted trace)"
        ),
    ] = False,
) -> Response:
    """Soft delete; ``If-Match`` is optional here (412 when it is given and stale)."""
    if user is None:
        raise Unauthorised("deleting a trace needs a bearer token")
    with db.begin(user.name) as conn:
        if purge:
            purge_trace(conn, trace_id=trace_id, user=user)
        else:
            delete_trace(conn, trace_id=trace_id, user=user, expected_version=expected)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.patch(
    "/traces/{trace_id}",
    summary="Change name, visibility or settlement (owner)",
    responses={200: {"model": TraceSummary, "description": "The trace as changed"}},
)
async def change_trace(
    user: MapperUser,
    raw: JsonBody,
    request: Request,
    trace_id: int,
    db: DbDep,
    if_match: Annotated[str | None, Header(description="the version read (required)")] = None,
) -> Response:
    """JSON merge patch of ``name``, ``visibility``, ``settlement_id``; needs ``If-Match``.

    Whether the caller may change the trace is answered before whether the
    request names a version (403 before 428).
    """
    fields = parse_json(raw or b"null")

    def work() -> dict[str, Any]:
        with db.begin(user.name) as conn:
            owned_trace(conn, trace_id, user, "change")
            expected = expected_version(if_match)
            return patch_trace(
                conn, trace_id=trace_id, user=user, fields=fields, expected_version=expected
            )

    trace = await run_in_threadpool(work)
    trace["links"] = _trace_links(request, trace_id)
    return JSONResponse(trace, headers={"ETag": etag(trace["version"])})


@router.post(
    "/traces/{trace_id}/boundary",
    summary="Perimeter walk -> boundary polygon (optionally a settlement's new boundary)",
)
def boundary(
    trace_id: int,
    user: MapperUser,
    db: DbDep,
    settings: SettingsDep,
    max_gap_m: Annotated[float, Query(gt=0, le=10_000)] = 50.0,
    simplify_m: Annotated[float | None, Query(ge=0, le=100)] = None,
    settlement_id: Annotated[int | None, Query(ge=1)] = None,
    if_match: Annotated[str | None, Header()] = None,
) -> Response:
    """A GeoJSON Feature (Polygon) with ``area_m2``, ``perimeter_m``, ``closure_gap_m``.

    With ``settlement_id`` (and ``If-Match`` naming the settlement's version)
    the polygon is written as that settlement's new boundary.
    """
    expected = expected_version(if_match) if settlement_id is not None else None
    tolerance = settings.trace_boundary_simplify_m if simplify_m is None else simplify_m
    with db.begin(user.name) as conn:
        feature, version = trace_boundary(
            conn,
            trace_id=trace_id,
            user=user,
            max_gap_m=max_gap_m,
            simplify_m=tolerance,
            settlement_id=settlement_id,
            expected_version=expected,
        )
    headers = {"ETag": etag(version)} if version is not None else {}
    return JSONResponse(feature, headers=headers, media_type="application/geo+json")
