"""Households of a structure: enumerator and admin only (personal fields)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Connection

from app.bodies import JsonBody
from app.deps import DbDep, EnumeratorUser
from app.idempotent import IdempotencyKey, idempotent_write
from app.links import href
from app.preconditions import NO_STORE, ExpectedVersion, etag
from geo.core.errors import InvalidInput
from geo.core.idempotency import request_hash
from geo.layers.households import (
    Household,
    HouseholdList,
    create_household,
    delete_household,
    get_household,
    list_households,
    patch_household,
)
from geo.layers.writes import parse_json

router = APIRouter(tags=["households"])

ObjectId = Annotated[int, Path(ge=1, le=2**62)]


def _one(
    record: dict[str, Any], status_code: int = status.HTTP_200_OK, **headers: str
) -> JSONResponse:
    return JSONResponse(
        record,
        status_code=status_code,
        headers={"ETag": etag(record["version"]), **NO_STORE, **headers},
    )


@router.get(
    "/structures/{structure_id}/households",
    summary="Households of a structure",
    responses={200: {"model": HouseholdList, "description": "The live households, oldest first"}},
)
def get_structure_households(
    structure_id: ObjectId, db: DbDep, user: EnumeratorUser
) -> JSONResponse:
    """Every live household with personal fields (enumerator+)."""
    with db.read() as conn:
        records = list_households(conn, structure_id=structure_id)
    return JSONResponse({"structure_id": structure_id, "households": records}, headers=NO_STORE)


@router.post(
    "/structures/{structure_id}/households",
    status_code=status.HTTP_201_CREATED,
    summary="Record a household",
    responses={201: {"model": Household, "description": "The household as recorded"}},
)
async def post_household(
    user: EnumeratorUser,
    idempotency_key: IdempotencyKey,
    body: JsonBody,
    structure_id: ObjectId,
    request: Request,
    db: DbDep,
) -> Response:
    """Create a household (201 + Location + ETag); honours ``Idempotency-Key``."""

    def create(conn: Connection) -> Response:
        fields = parse_json(body)
        if not isinstance(fields, dict):
            raise InvalidInput("the body must be a JSON object of household fields")
        record = create_household(conn, structure_id=structure_id, fields=fields)
        location = href(request, f"/households/{record['id']}")
        return _one(record, status.HTTP_201_CREATED, Location=location)

    return await idempotent_write(
        db,
        actor=user.name,
        key=idempotency_key,
        scope=f"POST /structures/{structure_id}/households",
        fingerprint=request_hash(body),
        write=create,
    )


@router.get(
    "/households/{household_id}",
    summary="One household",
    responses={200: {"model": Household, "description": "The household"}},
)
def get_one_household(household_id: ObjectId, db: DbDep, user: EnumeratorUser) -> JSONResponse:
    """The household with its version as ``ETag``."""
    with db.read() as conn:
        return _one(get_household(conn, household_id=household_id))


@router.patch(
    "/households/{household_id}",
    summary="Update a household (merge patch)",
    responses={200: {"model": Household, "description": "The household as updated"}},
)
async def patch_one_household(
    user: EnumeratorUser,
    expected: ExpectedVersion,
    body: JsonBody,
    household_id: ObjectId,
    db: DbDep,
) -> JSONResponse:
    """Merge-patch fields; needs ``If-Match`` (428 without, 412 when stale)."""

    def work() -> JSONResponse:
        fields = parse_json(body)
        with db.begin(actor=user.name) as conn:
            record = patch_household(
                conn, household_id=household_id, fields=fields, expected_version=expected
            )
        return _one(record)

    return await run_in_threadpool(work)


@router.delete(
    "/households/{household_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a household",
)
def delete_one_household(
    user: EnumeratorUser, expected: ExpectedVersion, household_id: ObjectId, db: DbDep
) -> Response:
    """Soft delete, audited; needs ``If-Match``."""
    with db.begin(actor=user.name) as conn:
        delete_household(conn, household_id=household_id, expected_version=expected)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
