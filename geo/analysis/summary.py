"""A settlement profile: what lies within one boundary, counted and estimated.

The summary counts the structures, households and facilities within the
settlement's boundary.  Nested and contested boundaries each count what they
cover; a structure straddling two neighbours counts in the one holding the
larger share of it (:data:`~geo.analysis.common.WITHIN_SETTLEMENT`).
Facilities count when they intersect the boundary.

Besides counts it reports what a Know Your City settlement profile does, each
figure labelled in ``basis`` as ``counted`` (from the enumeration) or
``estimated``:

* ``mean_household_size``: mean ``members`` of enumerated households;
* ``share_enumerated``: structures with at least one household / all structures;
* ``people_estimated_unenumerated``: residential structures (``use =
  'residential'``) with no household yet, times enumerated households per
  enumerated structure, times mean household size;
* ``population_estimate``: ``people`` counted + that estimate.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from geo.analysis.common import (
    HOUSEHOLDS_OF_T,
    VERIFIED_HOUSEHOLD,
    VERIFIED_STRUCTURE,
    WITHIN_SETTLEMENT,
    fetch_json,
    sql,
)
from geo.core.db import Database
from geo.core.errors import NotFound
from geo.core.privacy import Suppressor, sees_raw_counts
from geo.core.settings import Settings
from geo.layers.as_of import AS_OF_TABLES

__all__ = ["BASIS", "summary"]

BASIS: dict[str, str] = {
    "area_m2": "measured",
    "structures": "counted",
    "structures_by_use": "counted",
    "structures_enumerated": "counted",
    "share_enumerated": "counted",
    "households": "counted",
    "people": "counted",
    "mean_household_size": "counted",
    "households_per_enumerated_structure": "counted",
    "residential_structures_not_enumerated": "counted",
    "people_estimated_unenumerated": "estimated",
    "population_estimate": "estimated",
    "density_structures_per_ha": "counted",
    "density_people_per_ha": "estimated",
    "facilities_by_type": "counted",
    "facilities_by_condition": "counted",
}

# Without a WITH: :func:`summary` puts it in front, after the past tables for ``as_of``.
_SUMMARY_CTES = (
    """
s AS MATERIALIZED (
    SELECT id, name, status, geom, ST_Area(geom::geography) AS area_m2
    FROM settlements
    WHERE id = :id AND deleted_at IS NULL
),
st AS MATERIALIZED (
    SELECT t.id, t.use, """,
    HOUSEHOLDS_OF_T,
    """ AS households
    FROM s JOIN structures t ON """,
    WITHIN_SETTLEMENT,
    VERIFIED_STRUCTURE,
    """
),
hh AS (
    SELECT count(*) AS households,
           coalesce(sum(h.members), 0) AS people,
           avg(h.members)::float8 AS mean_size
    FROM households h JOIN st ON h.structure_id = st.id
    WHERE h.deleted_at IS NULL""",
    VERIFIED_HOUSEHOLD,
    """
),
counts AS (
    SELECT count(*) AS structures,
           count(*) FILTER (WHERE households > 0) AS enumerated,
           count(*) FILTER (WHERE use = 'residential' AND households = 0) AS residential_open
    FROM st
),
fac AS (
    SELECT f.type, coalesce(f.condition, 'unknown') AS condition, count(*) AS n
    FROM s JOIN facilities f
      ON f.deleted_at IS NULL AND f.geom && s.geom AND ST_Intersects(f.geom, s.geom)
    GROUP BY 1, 2
)
SELECT json_build_object(
    'id', s.id, 'name', s.name, 'status', s.status, 'area_m2', s.area_m2,
    'structures', counts.structures,
    'structures_enumerated', counts.enumerated,
    'residential_structures_not_enumerated', counts.residential_open,
    'households', hh.households,
    'people', hh.people,
    'mean_household_size', hh.mean_size,
    'structures_by_use', (
        SELECT coalesce(json_object_agg(u.use, u.n ORDER BY u.n DESC, u.use), '{}')
        FROM (SELECT coalesce(use, 'unknown') AS use, count(*) AS n FROM st GROUP BY 1) u),
    'facilities_by_type', (
        SELECT coalesce(json_object_agg(x.type, x.n ORDER BY x.n DESC, x.type), '{}')
        FROM (SELECT type, sum(n) AS n FROM fac GROUP BY type) x),
    'facilities_by_condition', (
        SELECT coalesce(json_object_agg(x.type, x.conditions ORDER BY x.type), '{}')
        FROM (SELECT type, json_object_agg(condition, n ORDER BY condition) AS conditions
              FROM fac GROUP BY type) x)
)::text
FROM s, counts, hh
""",
)
_SUMMARY = sql("WITH ", *_SUMMARY_CTES)
_SUMMARY_AS_OF = sql("WITH ", AS_OF_TABLES, ",\n", *_SUMMARY_CTES)


def _ratio(top: float | None, bottom: float | None) -> float | None:
    if top is None or not bottom:
        return None
    return top / bottom


def _compute(row: dict[str, Any]) -> dict[str, Any]:
    """Derived figures from the raw counts (no suppression yet)."""
    area_ha = row["area_m2"] / 10_000
    per_structure = _ratio(row["households"], row["structures_enumerated"])
    mean_size = row["mean_household_size"]
    estimate = None
    if per_structure is not None and mean_size is not None:
        estimate = row["residential_structures_not_enumerated"] * per_structure * mean_size
    population = row["people"] + estimate if estimate is not None else row["people"]
    return {
        "share_enumerated": _ratio(row["structures_enumerated"], row["structures"]),
        "households_per_enumerated_structure": per_structure,
        "people_estimated_unenumerated": estimate,
        "population_estimate": population,
        "density_structures_per_ha": _ratio(row["structures"], area_ha),
        "density_people_per_ha": _ratio(population, area_ha),
    }


def _round(value: Any, places: int) -> Any:
    return round(value, places) if isinstance(value, float) else value


def summary(
    db: Database,
    *,
    settlement_id: int,
    settings: Settings,
    role: str | None,
    verified: bool = False,
    as_of: datetime | None = None,
) -> dict[str, Any]:
    """The profile of one settlement, suppressed for ``role`` as :mod:`geo.core.privacy` rules.

    ``verified`` counts only structures and households whose ``review_state``
    is ``verified``; ``as_of`` counts the layers as they were at that moment
    (:mod:`geo.layers.as_of`).

    Raises
    ------
    geo.core.errors.NotFound
        When there is no live settlement ``settlement_id``.
    """
    if not -(2**63) <= settlement_id < 2**63:
        raise NotFound(f"id: no settlement {settlement_id}", field="id")
    row = fetch_json(
        db,
        _SUMMARY if as_of is None else _SUMMARY_AS_OF,
        {"id": settlement_id, "verified": verified, "as_of": as_of},
        timeout_ms=settings.analysis_timeout_ms,
        cached=as_of is None,
        as_of=as_of is not None,
    )
    if row is None:
        when = f" as of {as_of.isoformat()}" if as_of is not None else ""
        raise NotFound(f"id: no settlement {settlement_id}{when}", field="id")
    derived = _compute(row)
    hide = Suppressor(active=not sees_raw_counts(role))
    counts = hide.counts(
        {
            "structures": row["structures"],
            "structures_enumerated": row["structures_enumerated"],
            "residential_structures_not_enumerated": row["residential_structures_not_enumerated"],
            "households": row["households"],
            "people": row["people"],
        },
        prefix="",
    )
    counts.update(hide.derived({"people": counts["people"]}, base="households", prefix=""))
    shown: dict[str, Any] = dict(derived)
    shown["mean_household_size"] = row["mean_household_size"]
    rules = {
        "structures": ["density_structures_per_ha", "share_enumerated"],
        "structures_enumerated": ["share_enumerated", "households_per_enumerated_structure"],
        "households": [
            "mean_household_size",
            "households_per_enumerated_structure",
            "people_estimated_unenumerated",
            "population_estimate",
            "density_people_per_ha",
        ],
        "residential_structures_not_enumerated": [
            "people_estimated_unenumerated",
            "population_estimate",
            "density_people_per_ha",
        ],
        "people": ["population_estimate", "density_people_per_ha"],
    }
    for base, names in rules.items():
        shown.update(hide.derived({k: shown[k] for k in names}, base=base, prefix=""))
    by_condition = {
        kind: hide.breakdown(conditions, f"facilities_by_condition.{kind}")
        for kind, conditions in row["facilities_by_condition"].items()
    }
    return {
        "id": row["id"],
        "name": row["name"],
        "status": row["status"],
        "area_m2": round(row["area_m2"], 2),
        "area_ha": round(row["area_m2"] / 10_000, 4),
        "structures": counts["structures"],
        "structures_by_use": hide.breakdown(row["structures_by_use"], "structures_by_use"),
        "structures_enumerated": counts["structures_enumerated"],
        "share_enumerated": _round(shown["share_enumerated"], 4),
        "households": counts["households"],
        "people": counts["people"],
        "mean_household_size": _round(shown["mean_household_size"], 2),
        "households_per_enumerated_structure": _round(
            shown["households_per_enumerated_structure"], 3
        ),
        "residential_structures_not_enumerated": counts["residential_structures_not_enumerated"],
        "people_estimated_unenumerated": _round(shown["people_estimated_unenumerated"], 1),
        "population_estimate": _round(shown["population_estimate"], 1),
        "density_structures_per_ha": _round(shown["density_structures_per_ha"], 2),
        "density_people_per_ha": _round(shown["density_people_per_ha"], 2),
        "facilities_by_type": hide.breakdown(row["facilities_by_type"], "facilities_by_type"),
        "facilities_by_condition": by_condition,
        "basis": BASIS,
        "verified_only": verified,
        "as_of": as_of.isoformat() if as_of is not None else None,
        "suppressed": hide.suppressed,
    }
