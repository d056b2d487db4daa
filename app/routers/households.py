"""Households of a structure: enumerator and admin only (personal fields)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from app.bodies import read_limited
from app.deps import DbDep, EnumeratorUser, SettingsDep
from app.idempotent import remember, replay_or_claim
from app.links import href
from app.preconditions import etag, expected_version
from geo.errors import InvalidInput
from geo.households import (
    create_household,
    delete_household,
    get_household,
    list_households,
    patch_household,
)
from geo.idempotency import request_hash
from geo.layers.writes import parse_json

router = APIRouter(tags=["households"])

ObjectId = Annotated[int, Path(ge=1, le=2**62)]
_PRIVATE = {"Cache-Control": "private, no-store"}


def _one(record: dict[str, Any], status: int = 200, **headers: str) -> JSONResponse:
    return JSONResponse(
        record, status_code=status, headers={"ETag": etag(record["version"]), **_PRIVATE, **headers}
    )


@router.get("/structures/{structure_id}/households", summary="Households of a structure")
def get_structure_households(
    structure_id: ObjectId, db: DbDep, user: EnumeratorUser
) -> JSONResponse:
    """Every live household with personal fields (enumerator+)."""
    with db.read() as conn:
        records = list_households(conn, structure_id=structure_id)
    return JSONResponse({"structure_id": structure_id, "households": records}, headers=_PRIVATE)


@router.post("/structures/{structure_id}/households", status_code=201, summary="Record a household")
async def post_household(
    structure_id: ObjectId,
    request: Request,
    db: DbDep,
    settings: SettingsDep,
    user: EnumeratorUser,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> Response:
    """Create a household (201 + Location + ETag); honours ``Idempotency-Key``."""
    body = await read_limited(request, 1024 * 1024, setting="households body (1 MiB)")

    def work() -> Response:
        fields = parse_json(body)
        if not isinstance(fields, dict):
            raise InvalidInput("the body must be a JSON object of household fields")
        with db.begin(actor=user.name) as conn:
            if idempotency_key is not None:
                replay = replay_or_claim(
                    conn,
                    principal=user.name,
                    key=idempotency_key,
                    scope=f"POST /structures/{structure_id}/households",
                    fingerprint=request_hash(body),
                )
                if replay is not None:
                    return replay
            record = create_household(conn, structure_id=structure_id, fields=fields)
            response = _one(record, 201, Location=href(request, f"/households/{record['id']}"))
            if idempotency_key is not None:
                remember(conn, principal=user.name, key=idempotency_key, response=response)
            return response

    return await run_in_threadpool(work)


@router.get("/households/{household_id}", summary="One household")
def get_one_household(household_id: ObjectId, db: DbDep, user: EnumeratorUser) -> JSONResponse:
    """The household with its version as ``ETag``."""
    with db.read() as conn:
        return _one(get_household(conn, household_id=household_id))


@router.patch("/households/{household_id}", summary="Update a household (merge patch)")
async def patch_one_household(
    household_id: ObjectId,
    request: Request,
    db: DbDep,
    user: EnumeratorUser,
    if_match: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Merge-patch fields; needs ``If-Match`` (428 without, 412 when stale)."""
    expected = expected_version(if_match)
    body = await read_limited(request, 1024 * 1024, setting="households body (1 MiB)")

    def work() -> JSONResponse:
        fields = parse_json(body)
        with db.begin(actor=user.name) as conn:
            record = patch_household(
                conn, household_id=household_id, fields=fields, expected_version=expected
            )
        return _one(record)

    return await run_in_threadpool(work)


@router.delete("/households/{household_id}", status_code=204, summary="Delete a household")
def delete_one_household(
    household_id: ObjectId,
    db: DbDep,
    user: EnumeratorUser,
    if_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Soft delete, audited; needs ``If-Match``."""
    expected = expected_version(if_match)
    with db.begin(actor=user.name) as conn:
        delete_household(conn, household_id=household_id, expected_version=expected)
    return Response(status_code=204)
