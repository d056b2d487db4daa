"""Settlement profiles, community verification moves and the printable atlas over HTTP."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from app.bodies import JsonBody
from app.deps import DbDep, PlannerUser, PublicReader, SettingsDep
from app.preconditions import ExpectedVersion, etag
from app.problems import validation_errors
from geo.analysis.common import require_settlement
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
