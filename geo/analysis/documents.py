"""Typed contracts of the analyses' JSON answers: settlement summary, impact, access.

Built by :func:`geo.analysis.summary.summary`, :func:`geo.analysis.impact.impact`
and :func:`geo.analysis.access.access`.  For anonymous and viewer callers small
counts, and every figure derived from one, are ``null`` and named in
``suppressed`` (:mod:`geo.core.privacy`): every count and figure here is nullable.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from geo.core.documents import Document

__all__ = ["AccessSummary", "ImpactSettlement", "ImpactSummary", "SettlementSummary"]

Count = int | None
"""A count: ``null`` when suppressed."""
Figure = float | None
"""A figure derived from counts: ``null`` when suppressed or undefined (nothing to divide by)."""


def _suppressed() -> Any:
    return Field(description="Names of the values hidden as null for this caller, in order")


def _verified_only() -> Any:
    return Field(description="Whether only verified structures and households were counted")


class SettlementSummary(Document):
    """``GET /settlements/{id}/summary``: what lies within one boundary, counted and estimated."""

    id: int
    name: str
    status: str = Field(description="surveyed, contested, proposed or recognised")
    area_m2: float
    area_ha: float
    structures: Count
    structures_by_use: dict[str, Count] = Field(description="{use: structures}, largest first")
    structures_enumerated: Count = Field(description="Structures with at least one household")
    share_enumerated: Figure
    households: Count
    people: Count = Field(description="Sum of the enumerated households' members")
    mean_household_size: Figure
    households_per_enumerated_structure: Figure
    residential_structures_not_enumerated: Count
    people_estimated_unenumerated: Figure
    population_estimate: Figure = Field(description="people + people_estimated_unenumerated")
    density_structures_per_ha: Figure
    density_people_per_ha: Figure
    facilities_by_type: dict[str, Count] = Field(description="{type: facilities}")
    facilities_by_condition: dict[str, dict[str, Count]] = Field(
        description="{type: {condition: facilities}}; no recorded condition is 'unknown'"
    )
    basis: dict[str, Literal["measured", "counted", "estimated"]] = Field(
        description="How each figure was obtained"
    )
    verified_only: bool = _verified_only()
    as_of: datetime | None = Field(description="The past moment counted (null: now)")
    suppressed: list[str] = _suppressed()


class ImpactSettlement(Document):
    """What the zone takes in one settlement (``settlement_id`` null: outside every one)."""

    settlement_id: int | None
    name: str | None
    structures: Count
    households: Count
    people: Count


class ImpactSummary(Document):
    """``POST /analysis/impact`` (``f=json``): what a corridor or zone takes."""

    geometry_type: str = Field(description="Type of the input geometry")
    buffer_m: float
    min_overlap: float
    buffer_area_m2: float = Field(description="Ellipsoidal area of the zone")
    structures: Count
    households: Count
    people: Count
    structures_by_use: dict[str, Count]
    by_settlement: list[ImpactSettlement] = Field(description="Most structures first")
    facilities_by_type: dict[str, Count]
    verified_only: bool = _verified_only()
    suppressed: list[str] = _suppressed()
    hint: str | None = Field(
        default=None,
        description="Why nothing was found, when the geometry looks like it has swapped axes",
    )


class AccessSummary(Document):
    """``GET /analysis/access`` (``f=json``): structures beyond reach of a facility type."""

    facility_type: str
    max_distance_m: float
    settlement_id: int | None
    structures_total: Count
    structures_beyond: Count
    share_beyond: Figure
    households_total: Count
    households_beyond: Count
    share_households_beyond: Figure
    facilities_considered: Count = Field(
        description="Live facilities of the type whose condition is not broken"
    )
    verified_only: bool = _verified_only()
    suppressed: list[str] = _suppressed()
