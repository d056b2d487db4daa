"""The one list of a settlement profile's fields, after SDI's Know Your City profile.

Each field has a ``basis``: ``counted`` (computed from the mapped and
enumerated data), ``estimated`` (computed, with the method named) or
``reported`` (what the community reported or agreed at a forum, stored in
``settlement_profiles.fields``).  Computed fields are read-only: a ``PUT``
may send them back as read (with basis ``counted`` or ``estimated``, ignored)
but cannot set them; a community figure that differs from the count goes in a
reported field (``population_reported``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date
from typing import Any

from geo.core.errors import InvalidInput

__all__ = ["COMPUTED", "REPORTED", "ReportedField", "check_reported"]

COMPUTED: dict[str, tuple[str, str]] = {
    "area_ha": ("counted", "Area inside the mapped boundary, hectares"),
    "structures": ("counted", "Structures mapped inside the boundary"),
    "structures_by_use": ("counted", "{use: structures}"),
    "structures_enumerated": ("counted", "Structures with at least one household"),
    "households": ("counted", "Households enumerated"),
    "people_counted": ("counted", "Members of the enumerated households"),
    "mean_household_size": ("counted", "Mean members per enumerated household"),
    "population": ("estimated", "People counted plus unenumerated residential estimate"),
    "density_structures_per_ha": ("counted", "Structures per hectare"),
    "density_people_per_ha": ("estimated", "Estimated population per hectare"),
    "water_points": ("counted", "Water points (taps, kiosks) mapped"),
    "water_points_working": ("counted", "Water points whose condition is working"),
    "toilet_blocks": ("counted", "Toilet blocks mapped"),
    "toilet_blocks_working": ("counted", "Toilet blocks whose condition is working"),
    "toilet_structures": ("counted", "Structures whose use is toilet"),
}
"""Computed fields: name -> (basis, meaning)."""

POPULATION_METHOD = (
    "people counted in enumerated households + residential structures without a household "
    "x households per enumerated structure x mean household size"
)


@dataclass(frozen=True)
class ReportedField:
    """One reported field: its kind, allowed values and meaning.

    ``kind`` is ``text``, ``number``, ``integer``, ``date``, ``choice``,
    ``list`` (of ``choices`` when given, else of short texts) or ``shares``
    (``{choice: percent}`` summing to at most 100).
    """

    kind: str
    meaning: str
    choices: tuple[str, ...] = ()
    maximum: float = 1e9


OWNERS = ("government", "county", "private", "community", "religious", "unknown")
HAZARDS = (
    "flooding",
    "fire",
    "landslide",
    "pollution",
    "power_lines",
    "railway",
    "dumpsite",
    "river",
    "other",
)

REPORTED: dict[str, ReportedField] = {
    "population_reported": ReportedField(
        "integer", "Population agreed at the open community forum", maximum=10_000_000
    ),
    "forum_date": ReportedField("date", "Date of the forum that agreed the figures"),
    "boundary_walked_on": ReportedField("date", "Date the boundary was walked with GPS"),
    "land_ownership": ReportedField(
        "shares", "Share of the land (percent) by owner type", choices=OWNERS
    ),
    "hazards": ReportedField("list", "Hazards the settlement faces", choices=HAZARDS),
    "eviction_threat": ReportedField(
        "choice", "Threat of eviction", choices=("none", "low", "medium", "high", "notice_served")
    ),
    "eviction_notes": ReportedField("text", "Notices, court cases, dates"),
    "electricity": ReportedField(
        "choice",
        "Main electricity supply",
        choices=("none", "informal", "prepaid_some", "prepaid_most", "metered_most"),
    ),
    "electricity_cost_kes_per_month": ReportedField(
        "number", "Typical household electricity cost, KES a month", maximum=1_000_000
    ),
    "water_cost_kes_per_20l": ReportedField(
        "number", "Price of a 20-litre jerrican, KES", maximum=10_000
    ),
    "toilet_cost_kes_per_use": ReportedField(
        "number", "Price of one use of a pay toilet, KES", maximum=10_000
    ),
    "rent_kes_per_month": ReportedField(
        "number", "Typical rent of a room, KES a month", maximum=10_000_000
    ),
    "priorities": ReportedField("list", "The community's priorities, most pressing first"),
    "notes": ReportedField("text", "Anything else the profile should say"),
}
"""Reported fields, stored in ``settlement_profiles.fields``."""

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MAX_TEXT = 2000
_MAX_ITEMS = 20


def _number(name: str, value: Any, spec: ReportedField, *, integer: bool) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"fields.{name} must be a number", field=name)
    if integer and value != int(value):
        raise InvalidInput(f"fields.{name} must be a whole number", field=name)
    if not 0 <= value <= spec.maximum:
        raise InvalidInput(f"fields.{name} must be between 0 and {spec.maximum:g}", field=name)
    return int(value) if integer else value


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidInput(
            f"fields.{name} must be one of {', '.join(choices)}; got {value!r}", field=name
        )
    return value


def _text(name: str, value: Any, limit: int = _MAX_TEXT) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidInput(f"fields.{name} must be text of at most {limit} characters", field=name)
    return value


def _shares(name: str, value: Any, spec: ReportedField) -> dict[str, float]:
    if not isinstance(value, dict):
        raise InvalidInput(f"fields.{name} must be an object {{owner type: percent}}", field=name)
    out: dict[str, float] = {}
    for key, share in value.items():
        _choice(f"{name} key", key, spec.choices)
        out[key] = _number(
            f"{name}.{key}", share, ReportedField("number", "", maximum=100), integer=False
        )
    if sum(out.values()) > 100.5:
        raise InvalidInput(f"fields.{name}: shares add up to more than 100 percent", field=name)
    return out


def _is_date(value: str) -> bool:
    """Whether a ``YYYY-MM-DD`` string names a day of the calendar (not 2026-02-30)."""
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _check(name: str, value: Any, spec: ReportedField) -> Any:
    if spec.kind in {"number", "integer"}:
        return _number(name, value, spec, integer=spec.kind == "integer")
    if spec.kind == "choice":
        return _choice(name, value, spec.choices)
    if spec.kind == "date":
        if not isinstance(value, str) or not _DATE.match(value) or not _is_date(value):
            raise InvalidInput(f"fields.{name} must be a date YYYY-MM-DD", field=name)
        return value
    if spec.kind == "shares":
        return _shares(name, value, spec)
    if spec.kind == "list":
        if not isinstance(value, list) or len(value) > _MAX_ITEMS:
            raise InvalidInput(f"fields.{name} must be a list of at most {_MAX_ITEMS}", field=name)
        if spec.choices:
            return [_choice(name, item, spec.choices) for item in value]
        return [_text(name, item, 200) for item in value]
    return _text(name, value)


def check_reported(given: Any) -> dict[str, Any]:
    """The reported fields of a ``PUT`` body's ``fields``, checked; nulls dropped.

    Each value is bare or ``{"value": v, "basis": "reported"}`` (the shape
    ``GET`` answers).  Computed fields sent back as read (basis ``counted`` or
    ``estimated``) are ignored.

    Raises
    ------
    geo.core.errors.InvalidInput
        Naming an unknown field, a computed field being set, or a bad value.

    >>> check_reported({"hazards": ["fire"], "structures": {"value": 3, "basis": "counted"}})
    {'hazards': ['fire']}
    """
    if not isinstance(given, dict):
        raise InvalidInput("fields must be an object {name: value}", field="fields")
    out: dict[str, Any] = {}
    for name, raw in given.items():
        value, basis = raw, None
        if isinstance(raw, dict) and "value" in raw and set(raw) <= {"value", "basis", "method"}:
            value, basis = raw["value"], raw.get("basis")
        if name in COMPUTED:
            if basis in {"counted", "estimated"}:
                continue
            raise InvalidInput(
                f"fields.{name} is computed from the data ({COMPUTED[name][0]}) and cannot be "
                "set; record a community figure in a reported field such as population_reported",
                field=name,
            )
        spec = REPORTED.get(name)
        if spec is None:
            raise InvalidInput(
                f"fields.{name} is not a profile field; reported fields: {', '.join(REPORTED)}",
                field=name,
            )
        if basis not in (None, "reported"):
            raise InvalidInput(f"fields.{name}: basis must be 'reported'", field=name)
        if value is not None:
            out[name] = _check(name, value, spec)
    return out
