"""Planner analyses over HTTP: parse, authorise, call :mod:`geo.analysis`, answer.

Counts are suppressed for anonymous and viewer callers (see :mod:`geo.core.privacy`);
per-structure output (``?f=geojson``) needs the planner role.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app.bodies import JsonBody
from app.deps import DbDep, PublicReader, SettingsDep, ViewerUser
from app.problems import validation_errors
from app.routers.profiles import AsOf, Verified, verified_only
from app.streaming import ClosingStreamingResponse
from geo.analysis.access import access as access_counts
from geo.analysis.access import access_features
from geo.analysis.density import density as density_grid
from geo.analysis.documents import AccessSummary, ImpactSummary, SettlementSummary
from geo.analysis.impact import ImpactRequest, impact_features
from geo.analysis.impact import impact as impact_counts
from geo.analysis.overlaps import overlaps as overlap_pairs
from geo.analysis.summary import summary
from geo.core.auth import Principal
from geo.core.errors import Forbidden, InvalidInput
from geo.core.privacy import FEATURE_ROLE, sees_features
from geo.layers.as_of import as_of_moment

router = APIRouter(tags=["analysis"])

GEOJSON = "application/geo+json"
Format = Annotated[
    Literal["json", "geojson"],
    Query(description="`geojson`: the structures themselves (planner or admin)"),
]


def _role(user: Principal | None) -> str | None:
    return user.role if user is not None else None


def _require_features(user: Principal) -> None:
    if not sees_features(user.role):
        raise Forbidden(
            f"per-structure output (f=geojson) needs role {FEATURE_ROLE} or higher; "
            f"your token has {user.role}"
        )


def _stream(chunks: Iterator[bytes]) -> StreamingResponse:
    """Prime the stream (errors and timeouts become problems), then send it."""
    first = next(chunks)

    def body() -> Iterator[bytes]:
        yield first
        yield from chunks

    return ClosingStreamingResponse(body(), media_type=GEOJSON)


def _impact_body(raw: bytes) -> ImpactRequest:
    """The impact request from JSON bytes; a 422 naming each bad field."""
    try:
        return ImpactRequest.model_validate_json(raw or b"null")
    except ValidationError as exc:
        detail, errors = validation_errors(exc.errors())
        raise InvalidInput(detail, slug="invalid-request", errors=errors) from exc


@router.get(
    "/settlements/{settlement_id}/summary",
    summary="Settlement profile",
    response_model=None,
    responses={200: {"model": SettlementSummary, "description": "The settlement's profile"}},
)
def settlement_summary(
    settlement_id: int,
    user: PublicReader,
    db: DbDep,
    settings: SettingsDep,
    verified: Verified = False,
    as_of: AsOf = None,
) -> JSONResponse:
    """Area, structures by use, households, people, densities, facilities by type and
    condition, and the Know Your City estimates, each labelled counted or estimated.
    Counts below 5 are null for anonymous and viewer callers and named in `suppressed`.
    `verified=true` counts verified structures and households only; `as_of` counts the
    layers as they were then (from their history)."""
    return JSONResponse(
        summary(
            db,
            settlement_id=settlement_id,
            settings=settings,
            role=_role(user),
            verified=verified_only(verified, user, settings),
            as_of=as_of_moment(as_of),
        )
    )


@router.post(
    "/analysis/impact",
    summary="Impact of a corridor or zone",
    response_model=None,
    responses={
        200: {
            "model": ImpactSummary,
            "description": "Counts (f=json), or the affected structures (f=geojson, planner)",
            "content": {GEOJSON: {}},
        }
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ImpactRequest.model_json_schema()}},
        }
    },
)
async def impact(
    user: ViewerUser,
    raw: JsonBody,
    db: DbDep,
    settings: SettingsDep,
    f: Format = "json",
    crs: Annotated[str | None, Query(description="CRS of the body's coordinates")] = None,
    verified: Verified = False,
) -> Response:
    """Structures, households and people a buffered line or polygon takes, per settlement,
    and facilities affected by type.  Body: `{"geometry": <GeoJSON>, "buffer_m": 30}`,
    optional `crs`, `min_overlap` (0..1 of a footprint inside)."""
    body = _impact_body(raw)
    if crs is not None:
        if body.crs is not None and body.crs != crs:
            raise InvalidInput("crs: the query and the body name different CRSs", field="crs")
        body = body.model_copy(update={"crs": crs})
    if f == "geojson":
        _require_features(user)
        chunks = impact_features(db, request=body, settings=settings, verified=verified)
        return await run_in_threadpool(_stream, chunks)
    counts = await run_in_threadpool(
        partial(
            impact_counts, db, request=body, settings=settings, role=user.role, verified=verified
        )
    )
    return JSONResponse(counts)


@router.get(
    "/analysis/access",
    summary="Structures beyond reach of a facility type",
    response_model=None,
    responses={
        200: {
            "model": AccessSummary,
            "description": "Counts (f=json), or the structures beyond reach (f=geojson, planner)",
            "content": {GEOJSON: {}},
        }
    },
)
def access(
    user: ViewerUser,
    db: DbDep,
    settings: SettingsDep,
    facility_type: Annotated[str, Query(description="water_point, toilet_block, school, ...")],
    max_distance_m: Annotated[float, Query(description="metres, edge to nearest facility")],
    settlement_id: int | None = None,
    f: Format = "json",
    verified: Verified = False,
) -> Response:
    """Structures farther than `max_distance_m` from the nearest facility of the type
    whose condition is not broken; `f=geojson` (planner) lists them with the nearest
    facility id and distance."""
    if f == "geojson":
        _require_features(user)
        return _stream(
            access_features(
                db,
                facility_type=facility_type,
                max_distance_m=max_distance_m,
                settlement_id=settlement_id,
                settings=settings,
                verified=verified,
            )
        )
    counts = access_counts(
        db,
        facility_type=facility_type,
        max_distance_m=max_distance_m,
        settlement_id=settlement_id,
        settings=settings,
        role=user.role,
        verified=verified,
    )
    return JSONResponse(counts)


@router.get(
    "/analysis/overlaps",
    summary="Overlapping settlement boundaries",
    response_class=Response,
    responses={200: {"content": {GEOJSON: {}}, "description": "A FeatureCollection"}},
)
def overlaps(
    user: ViewerUser, db: DbDep, settings: SettingsDep, settlement_id: int | None = None
) -> Response:
    """Pairs of settlements whose boundaries overlap: a FeatureCollection of the overlap
    polygons with `settlement_a`, `settlement_b`, `overlap_m2`."""
    body = overlap_pairs(db, settlement_id=settlement_id, settings=settings)
    return Response(body, media_type=GEOJSON)


@router.get(
    "/analysis/density",
    summary="Density grid over a settlement",
    response_class=Response,
    responses={200: {"content": {GEOJSON: {}}, "description": "A FeatureCollection"}},
)
def density(
    user: ViewerUser,
    db: DbDep,
    settings: SettingsDep,
    settlement_id: int,
    cell_m: Annotated[float, Query(description="cell size in metres (UTM 37S grid)")] = 100,
    verified: Verified = False,
) -> Response:
    """Square cells aligned in UTM 37S with `structures`, `households` and `people`
    (a cell counts a structure when it holds its point on surface)."""
    body = density_grid(
        db,
        settlement_id=settlement_id,
        cell_m=cell_m,
        settings=settings,
        role=user.role,
        verified=verified,
    )
    return Response(body, media_type=GEOJSON)
