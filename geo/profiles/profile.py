"""A settlement's profile: computed figures from the summary joined with reported fields.

The computed fields come from :func:`geo.analysis.summary.summary` (so they
equal the summary and are suppressed the same way); the reported ones from
``settlement_profiles``, one versioned and audited row per settlement.  A
settlement with no stored profile yet is at version 0; ``If-Match: "0"`` (or
``*``) creates it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, text
from sqlalchemy.dialects.postgresql import insert

from geo.analysis.summary import summary
from geo.core.db import Database
from geo.core.errors import InvalidInput, NotFound, PreconditionFailed
from geo.core.privacy import Suppressor, sees_raw_counts
from geo.core.settings import Settings
from geo.core.tables import settlement_profiles, settlements
from geo.profiles.fields import COMPUTED, POPULATION_METHOD, REPORTED, check_reported

__all__ = ["get_profile", "put_profile", "stored_profile"]

# computed field -> the summary member it is (suppressed when that one is)
_FROM_SUMMARY = {
    "area_ha": "area_ha",
    "structures": "structures",
    "structures_by_use": "structures_by_use",
    "structures_enumerated": "structures_enumerated",
    "households": "households",
    "people_counted": "people",
    "mean_household_size": "mean_household_size",
    "population": "population_estimate",
    "density_structures_per_ha": "density_structures_per_ha",
    "density_people_per_ha": "density_people_per_ha",
}

# What a GET answers besides ``fields``: a PUT may send it back and it is ignored.
_READ_ONLY_MEMBERS = frozenset(
    {"settlement_id", "name", "version", "updated_at", "as_of", "verified_only", "suppressed"}
)

_PAST_PROFILE = text(
    """
SELECT fh.snapshot -> 'fields' AS fields, fh.version, fh.changed_at AS updated_at
FROM feature_history fh
WHERE fh.collection = 'settlement_profiles' AND fh.feature_id = :id AND fh.changed_at <= :as_of
ORDER BY fh.id DESC
LIMIT 1
"""
)


def stored_profile(
    conn: Connection, settlement_id: int, as_of: datetime | None = None
) -> dict[str, Any]:
    """The reported fields with version and time (``as_of``: as they were then).

    Raises
    ------
    geo.core.errors.NotFound
        When there is no live settlement ``settlement_id``.
    """
    live = conn.execute(
        select(settlements.c.id).where(
            settlements.c.id == settlement_id, settlements.c.deleted_at.is_(None)
        )
    ).first()
    if live is None:
        raise NotFound(f"id: no settlement {settlement_id}", field="id")
    if as_of is not None:
        row = conn.execute(_PAST_PROFILE, {"id": settlement_id, "as_of": as_of}).first()
    else:
        row = conn.execute(
            select(
                settlement_profiles.c.fields,
                settlement_profiles.c.version,
                settlement_profiles.c.updated_at,
            ).where(settlement_profiles.c.settlement_id == settlement_id)
        ).first()
    if row is None:
        return {"fields": {}, "version": 0, "updated_at": None}
    return {
        "fields": dict(row.fields or {}),
        "version": int(row.version),
        "updated_at": row.updated_at,
    }


def _facilities(figures: dict[str, Any], hide: Suppressor) -> dict[str, Any]:
    """Water points and toilets, counted and working, from the summary's facilities."""
    by_type, by_condition = figures["facilities_by_type"], figures["facilities_by_condition"]
    by_use = figures["structures_by_use"]
    raw = {
        "water_points": by_type.get("water_point", 0),
        "water_points_working": by_condition.get("water_point", {}).get("working", 0),
        "toilet_blocks": by_type.get("toilet_block", 0),
        "toilet_blocks_working": by_condition.get("toilet_block", {}).get("working", 0),
        "toilet_structures": by_use.get("toilet", 0),
    }
    shown = {name: value for name, value in raw.items() if value is not None}
    out: dict[str, Any] = dict.fromkeys(raw)
    out.update(hide.counts(shown, prefix=""))
    for name, value in raw.items():
        if value is None:
            hide.note(name)
    return out


def get_profile(
    db: Database,
    *,
    settlement_id: int,
    settings: Settings,
    role: str | None,
    verified: bool = False,
    as_of: datetime | None = None,
) -> dict[str, Any]:
    """``GET /settlements/{id}/profile``: every field with its value and basis.

    Counts are suppressed for ``role`` as in the summary; ``verified`` and
    ``as_of`` as :func:`~geo.analysis.summary.summary` takes them.
    """
    with db.read() as conn:
        stored = stored_profile(conn, settlement_id, as_of)
    figures = summary(
        db,
        settlement_id=settlement_id,
        settings=settings,
        role=role,
        verified=verified,
        as_of=as_of,
    )
    hide = Suppressor(active=not sees_raw_counts(role))
    values = {name: figures[source] for name, source in _FROM_SUMMARY.items()}
    values.update(_facilities(figures, hide))
    fields: dict[str, dict[str, Any]] = {}
    for name, (basis, _meaning) in COMPUTED.items():
        fields[name] = {"value": values[name], "basis": basis}
    fields["population"]["method"] = POPULATION_METHOD
    for name in REPORTED:
        fields[name] = {"value": stored["fields"].get(name), "basis": "reported"}
    hidden = [name for name, source in _FROM_SUMMARY.items() if source in figures["suppressed"]]
    by_use = [s for s in figures["suppressed"] if s.startswith("structures_by_use.")]
    return {
        "settlement_id": settlement_id,
        "name": figures["name"],
        "version": stored["version"],
        "updated_at": stored["updated_at"].isoformat() if stored["updated_at"] else None,
        "as_of": figures["as_of"],
        "verified_only": verified,
        "fields": fields,
        "suppressed": [*hidden, *by_use, *hide.suppressed],
    }


def put_profile(
    conn: Connection, *, settlement_id: int, body: Any, expected_version: int | None
) -> int:
    """Replace the reported fields of a profile; the new version.

    ``body`` is ``{"fields": {...}}`` (:func:`~geo.profiles.fields.check_reported`).
    ``expected_version`` is the version the writer read (0: no profile yet;
    None: any).

    Raises
    ------
    geo.core.errors.PreconditionFailed
        When the stored version is not ``expected_version``.
    """
    if not isinstance(body, dict):
        raise InvalidInput('the body must be an object {"fields": {name: value}}', field="fields")
    unknown = sorted(set(body) - _READ_ONLY_MEMBERS - {"fields"})
    if unknown:
        raise InvalidInput(
            f'{unknown[0]} is not a member of a profile; send {{"fields": {{name: value}}}}',
            field=unknown[0],
        )
    fields = check_reported(body.get("fields", {}))
    current = stored_profile(conn, settlement_id)["version"]
    if expected_version is not None and expected_version != current:
        raise PreconditionFailed(
            f"the profile of settlement {settlement_id} is at version {current}; "
            "your If-Match is stale",
            current_version=current,
        )
    table = settlement_profiles
    if current == 0:
        created = (
            insert(table)
            .values(settlement_id=settlement_id, fields=fields)
            .on_conflict_do_nothing()
            .returning(table.c.version)
        )
        version = conn.execute(created).scalar_one_or_none()
    else:
        changed = (
            table.update()
            .where(table.c.settlement_id == settlement_id, table.c.version == current)
            .values(fields=fields)
            .returning(table.c.version)
        )
        version = conn.execute(changed).scalar_one_or_none()
    if version is None:  # another writer came in between
        now = stored_profile(conn, settlement_id)["version"]
        raise PreconditionFailed(
            f"the profile of settlement {settlement_id} changed meanwhile (now version {now})",
            current_version=now,
        )
    return int(version)
