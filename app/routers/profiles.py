"""Settlement profiles, community verification moves and the printable atlas over HTTP."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from functools import partial
from typing import IO, Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app.bodies import JsonBody
from app.deps import DbDep, PlannerUser, PublicReader, SettingsDep, ViewerUser
from app.preconditions import NO_STORE, ExpectedVersion, etag
from app.problems import validation_errors
from app.read_routing import long_stream
from geo.analysis.common import require_settlement
from geo.atlas.build import build_atlas
from geo.atlas.pdf import AtlasRequest
from geo.core.auth import Principal
from geo.core.errors import InvalidInput
from geo.core.settings import Settings
from geo.layers.as_of import as_of_moment
from geo.layers.writes import parse_json
from geo.profiles.profile import get_profile, put_profile
from geo.profiles.review import ReviewMove, move_review_state

__all__ = ["router", "verified_only"]

router = APIRouter(tags=["profiles"])

Verified = Annotated[
    bool, Query(description="Count only structures and households whose review_state is verified")
]
AsOf = Annotated[
    str | None,
    Query(description="A past date (YYYY-MM-DD, end of that day UTC) or ISO date-time"),
]


def verified_only(asked: bool, user: Principal | None, settings: Settings) -> bool:
    """Whether to count verified rows only: asked for, or anonymous under
    ``MAKAZI_PUBLIC_VERIFIED_ONLY``.

    >>> verified_only(False, None, Settings(public_verified_only=True))
    True
    """
    return asked or (user is None and settings.public_verified_only)


@router.get("/settlements/{settlement_id}/profile", summary="Settlement profile (Know Your City)")
def get_settlement_profile(
    settlement_id: int,
    user: PublicReader,
    db: DbDep,
    settings: SettingsDep,
    verified: Verified = False,
    as_of: AsOf = None,
) -> JSONResponse:
    """Every profile field as `{value, basis}`: computed ones (`counted`, `estimated`) from
    the data, reported ones from the stored profile.  Counts below 5 are null for anonymous
    and viewer callers and named in `suppressed`.  `ETag` is the profile's version."""
    body = get_profile(
        db,
        settlement_id=settlement_id,
        settings=settings,
        role=user.role if user else None,
        verified=verified_only(verified, user, settings),
        as_of=as_of_moment(as_of),
    )
    return JSONResponse(body, headers={"ETag": etag(body["version"])})


@router.put("/settlements/{settlement_id}/profile", summary="Replace a profile's reported fields")
def put_settlement_profile(
    settlement_id: int,
    user: PlannerUser,
    raw: JsonBody,
    db: DbDep,
    settings: SettingsDep,
    version: ExpectedVersion,
) -> JSONResponse:
    """Body `{"fields": {name: value}}` (or the GET answer, edited): the reported fields,
    replaced whole.  Needs `If-Match` with the version read (`"0"` before the first);
    computed fields cannot be set (422).  Answers the profile as GET does."""
    body = parse_json(raw)
    with db.begin(actor=user.name) as conn:
        put_profile(conn, settlement_id=settlement_id, body=body, expected_version=version)
    return get_settlement_profile(settlement_id, user, db, settings)


@router.post("/settlements/{settlement_id}/review", summary="Move rows through review states")
def post_review(settlement_id: int, user: PlannerUser, raw: JsonBody, db: DbDep) -> JSONResponse:
    """Body `{"to": "read_out", "from": "collected", "block": "KB-04"}` or with
    `structure_ids`; moves the chosen structures of the settlement and (unless
    `"households": false`) their households.  Each moved row gets a new version and
    a history entry.  Answers the counts moved."""
    try:
        move = ReviewMove.model_validate_json(raw or b"null")
    except ValidationError as exc:
        detail, errors = validation_errors(exc.errors())
        raise InvalidInput(detail, slug="invalid-request", errors=errors) from exc
    require_settlement(db, settlement_id, field="id")
    with db.begin(actor=user.name) as conn:
        counts = move_review_state(conn, settlement_id=settlement_id, move=move)
    return JSONResponse(counts)


PDF_CHUNK = 64 * 1024
SPOOL_BYTES = 8 * 1024 * 1024


def _file_chunks(handle: IO[bytes]) -> Iterator[bytes]:
    try:
        handle.seek(0)
        while chunk := handle.read(PDF_CHUNK):
            yield chunk
    finally:
        handle.close()


@router.get(
    "/settlements/{settlement_id}/atlas.pdf",
    summary="Printable atlas (PDF)",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/pdf": {}}, "description": "The atlas"}},
)
async def get_atlas(
    settlement_id: int,
    user: ViewerUser,
    db: DbDep,
    settings: SettingsDep,
    verified: Verified = False,
    as_of: AsOf = None,
    since: Annotated[
        str | None, Query(description="Add a page of structures added and removed since")
    ] = None,
    paper: Annotated[Literal["A4", "A3"], Query(description="Page size")] = "A4",
) -> StreamingResponse:
    """A cover with the outline and the profile, then per block a map page with the
    structure numbers and a verification sheet with a blank corrections column.  Every
    page carries the data's date and the role it was made for; no personal field is
    printed; suppressed counts print as `suppressed`.  Limited by
    `MAKAZI_ATLAS_TIMEOUT_S` and `MAKAZI_ATLAS_MAX_STRUCTURES`."""
    request = AtlasRequest(
        role=user.role,
        verified=verified,
        as_of=as_of_moment(as_of),
        since=as_of_moment(since, field="since", end_of_day=False),
        paper=paper,
    )
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 - closed by the stream
    try:
        await run_in_threadpool(
            partial(
                build_atlas,
                db,
                spool,
                settlement_id=settlement_id,
                settings=settings,
                request=request,
            )
        )
    except BaseException:
        spool.close()
        raise
    long_stream()  # a finished file: sent as read, not held whole a second time
    slug = re.sub(r"[^A-Za-z0-9]+", "-", str(settlement_id)).strip("-")
    day = (request.as_of or request.made_at).strftime("%Y-%m-%d")
    return StreamingResponse(
        _file_chunks(spool),
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'attachment; filename="atlas-{slug}-{day}.pdf"',
            **NO_STORE,
        },
    )
