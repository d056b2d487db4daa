"""Households (enumeration records) of a structure.

Households carry personal fields (``head_name``, ``phone``); only the
``enumerator`` and ``admin`` roles reach this module's read functions through
the API.  Everyone else sees the structure's household *count* only.  Writes
are versioned like features: an update names the version it read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field
from sqlalchemy import Connection, func, insert, select, update

from geo.core.documents import Document
from geo.core.errors import InvalidInput, NotFound, PreconditionFailed
from geo.core.tables import households, structures
from geo.layers.registry import ENUMS, REVIEW_PROPERTIES, Property
from geo.layers.writes import check_values

__all__ = [
    "HOUSEHOLD_PROPERTIES",
    "Household",
    "HouseholdList",
    "list_households",
    "get_household",
    "create_household",
    "patch_household",
    "delete_household",
]

HOUSEHOLD_PROPERTIES: tuple[Property, ...] = (
    Property("head_name", max_length=200, description="Personal: enumerator and admin only"),
    Property("phone", max_length=40, description="Personal: enumerator and admin only"),
    Property("members", "integer", minimum=0, maximum=100),
    Property("tenure", enum=ENUMS["tenure"]),
    Property("rent_kes", "integer", minimum=0, maximum=10_000_000),
    Property("years_in_settlement", "integer", minimum=0, maximum=150),
    *REVIEW_PROPERTIES,
    Property("structure_id", "integer", writable=False),
    Property("version", "integer", writable=False),
    Property("updated_at", "datetime", writable=False),
)
_COLUMNS = (
    households.c.id,
    households.c.structure_id,
    households.c.head_name,
    households.c.phone,
    households.c.members,
    households.c.tenure,
    households.c.rent_kes,
    households.c.years_in_settlement,
    households.c.review_state,
    households.c.review_note,
    households.c.version,
    households.c.updated_at,
)


class Household(Document):
    """One household record (``GET /households/{id}``, and what a create or patch answers).

    Every field the enumeration did not record is ``null``.
    """

    id: int
    structure_id: int
    head_name: str | None = Field(description="Personal: enumerator and admin only")
    phone: str | None = Field(description="Personal: enumerator and admin only")
    members: int | None = Field(ge=0, le=100)
    tenure: Literal["owner", "tenant", "structure_owner", "other"] | None
    rent_kes: int | None = Field(ge=0, le=10_000_000)
    years_in_settlement: int | None = Field(ge=0, le=150)
    review_state: Literal["collected", "read_out", "verified", "disputed"]
    review_note: str | None = Field(max_length=2000)
    version: int = Field(description="Also the ETag; name it in If-Match to change the record")
    updated_at: datetime


class HouseholdList(Document):
    """``GET /structures/{id}/households``: the structure's live households, oldest first."""

    structure_id: int
    households: list[Household]


def _as_dict(row: Any) -> dict[str, Any]:
    record = dict(row._mapping)
    record["updated_at"] = record["updated_at"].isoformat()
    return record


def _structure_exists(conn: Connection, structure_id: int) -> bool:
    return (
        conn.execute(
            select(structures.c.id).where(
                structures.c.id == structure_id, structures.c.deleted_at.is_(None)
            )
        ).first()
        is not None
    )


def list_households(conn: Connection, *, structure_id: int) -> list[dict[str, Any]]:
    """The live households of a structure, oldest first."""
    if not _structure_exists(conn, structure_id):
        raise NotFound(f"structures {structure_id} does not exist")
    rows = conn.execute(
        select(*_COLUMNS)
        .where(households.c.structure_id == structure_id, households.c.deleted_at.is_(None))
        .order_by(households.c.id)
    )
    return [_as_dict(row) for row in rows]


def get_household(conn: Connection, *, household_id: int) -> dict[str, Any]:
    """One live household."""
    row = conn.execute(
        select(*_COLUMNS).where(households.c.id == household_id, households.c.deleted_at.is_(None))
    ).first()
    if row is None:
        raise NotFound(f"households {household_id} does not exist")
    return _as_dict(row)


def create_household(
    conn: Connection, *, structure_id: int, fields: dict[str, Any]
) -> dict[str, Any]:
    """Record a household in a structure (the structure's count follows)."""
    if not _structure_exists(conn, structure_id):
        raise NotFound(f"structures {structure_id} does not exist")
    values = check_values(
        HOUSEHOLD_PROPERTIES, fields, partial=False, owner="households", prefix=""
    )
    new_id = conn.execute(
        insert(households).values(structure_id=structure_id, **values).returning(households.c.id)
    ).scalar_one()
    return get_household(conn, household_id=int(new_id))


def _stale_or_missing(conn: Connection, household_id: int) -> Exception:
    row = conn.execute(
        select(households.c.version, households.c.deleted_at).where(households.c.id == household_id)
    ).first()
    if row is None or row.deleted_at is not None:
        return NotFound(f"households {household_id} does not exist")
    return PreconditionFailed(
        f"households {household_id} is at version {row.version}; your If-Match is stale",
        current_version=int(row.version),
    )


def patch_household(
    conn: Connection, *, household_id: int, fields: dict[str, Any], expected_version: int | None
) -> dict[str, Any]:
    """Merge-patch a household (null clears a field)."""
    if not isinstance(fields, dict):
        raise InvalidInput("the body must be a JSON object of household fields")
    values = check_values(HOUSEHOLD_PROPERTIES, fields, partial=True, owner="households", prefix="")
    statement = update(households).where(
        households.c.id == household_id, households.c.deleted_at.is_(None)
    )
    if expected_version is not None:
        statement = statement.where(households.c.version == expected_version)
    row = conn.execute(
        statement.values(values or {"version": households.c.version}).returning(households.c.id)
    ).first()
    if row is None:
        raise _stale_or_missing(conn, household_id)
    return get_household(conn, household_id=household_id)


def delete_household(conn: Connection, *, household_id: int, expected_version: int | None) -> None:
    """Soft-delete a household (audited; the structure's count follows)."""
    statement = update(households).where(
        households.c.id == household_id, households.c.deleted_at.is_(None)
    )
    if expected_version is not None:
        statement = statement.where(households.c.version == expected_version)
    row = conn.execute(statement.values(deleted_at=func.now()).returning(households.c.id)).first()
    if row is None:
        raise _stale_or_missing(conn, household_id)
