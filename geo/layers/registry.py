"""The collections the service publishes, and the fields each one exposes.

This registry is the only source of table and column names that reach SQL
text: a request names a collection or property, and the name is looked up
here.  Anything not listed (personal household fields among them) cannot be
read, filtered on, sorted by or written through the layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Table, or_, true

from geo.auth import Principal
from geo.privacy import PERSONAL_HOUSEHOLD_FIELDS
from geo.tables import facilities, settlements, structures, traces

__all__ = ["Property", "Collection", "COLLECTIONS", "get_collection", "ENUMS"]

ENUMS: dict[str, tuple[str, ...]] = {
    "status": ("surveyed", "contested", "proposed", "recognised"),
    "use": (
        "residential",
        "business",
        "mixed",
        "religious",
        "school",
        "clinic",
        "toilet",
        "water_point",
        "other",
    ),
    "type": ("water_point", "toilet_block", "school", "clinic", "drainage", "road", "other"),
    "condition": ("working", "needs_repair", "broken"),
    "tenure": ("owner", "tenant", "structure_owner", "other"),
    "visibility": ("private", "community", "public"),
}


@dataclass(frozen=True)
class Property:
    """One published property.

    Attributes
    ----------
    name
        The property's name in GeoJSON and CQL2 (also its column name).
    kind
        JSON-schema type: ``string``, ``integer``, ``number``, ``boolean``,
        ``string-array`` or ``datetime``.
    writable
        Whether clients may set it (read-only ones are ignored on write).
    required
        Whether a create must give it.
    enum
        Allowed values, if any.
    max_length
        Longest accepted string.
    minimum, maximum
        Bounds of a number.
    default
        Value written when a create or replace leaves the property out or null.
    """

    name: str
    kind: str = "string"
    writable: bool = True
    required: bool = False
    enum: tuple[str, ...] | None = None
    max_length: int = 500
    minimum: float | None = None
    maximum: float | None = None
    description: str = ""
    default: Any = None


@dataclass(frozen=True)
class Collection:
    """One OGC API collection backed by one table.

    Attributes
    ----------
    geometry_types
        PostGIS geometry types accepted on write; the first is the canonical one.
    multi
        Whether written geometries are promoted to Multi* (settlement boundaries).
    temporal
        Column that ``datetime`` filters on.
    writable
        Whether the collection accepts Part 4 writes.
    """

    name: str
    title: str
    description: str
    table: Table
    properties: tuple[Property, ...]
    geometry_types: tuple[str, ...]
    temporal: str = "updated_at"
    writable: bool = True
    multi: bool = False
    _by_name: dict[str, Property] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({prop.name: prop for prop in self.properties})

    def find(self, name: str) -> Property | None:
        """The published property called ``name``, or None."""
        return self._by_name.get(name)

    def visible(self, user: Principal | None) -> ColumnElement[bool]:
        """SQL condition for the rows ``user`` may see (live rows only)."""
        live = self.table.c.deleted_at.is_(None)
        if self.name != "traces":
            return live
        visibility = self.table.c.visibility
        if user is None:
            return live & (visibility == "public")
        if user.at_least("admin"):
            return live & true()
        return live & or_(visibility.in_(("public", "community")), self.table.c.owner == user.name)


_BOOKKEEPING = (
    Property("version", "integer", writable=False, description="Increases with every change"),
    Property("updated_at", "datetime", writable=False, description="Time of the last change"),
)

SETTLEMENTS = Collection(
    name="settlements",
    title="Settlements",
    description="Settlement boundaries as mapped by their communities; contested claims may "
    "overlap.",
    table=settlements,
    properties=(
        Property("name", required=True, max_length=300),
        Property("alt_names", "string-array", description="Other names in use", default=()),
        Property("county"),
        Property("ward"),
        Property("status", enum=ENUMS["status"], default="surveyed"),
        Property("source"),
        Property("notes", max_length=5000),
        *_BOOKKEEPING,
    ),
    geometry_types=("MULTIPOLYGON", "POLYGON"),
    multi=True,
)

STRUCTURES = Collection(
    name="structures",
    title="Structures",
    description="Every structure, with the number painted on its wall, its use and materials.",
    table=structures,
    properties=(
        Property("structure_number", max_length=100, description="As painted on the wall"),
        Property(
            "settlement_id",
            "integer",
            minimum=1,
            description="Derived from the footprint when not given",
        ),
        Property("use", enum=ENUMS["use"]),
        Property("wall_material", max_length=100),
        Property("roof_material", max_length=100),
        Property("storeys", "integer", minimum=1, maximum=100),
        Property("households", "integer", writable=False, description="Enumerated households"),
        *_BOOKKEEPING,
    ),
    geometry_types=("POLYGON", "MULTIPOLYGON", "POINT"),
)

FACILITIES = Collection(
    name="facilities",
    title="Facilities",
    description="Shared services: water points, toilet blocks, schools, clinics, drainage, roads.",
    table=facilities,
    properties=(
        Property("type", required=True, enum=ENUMS["type"]),
        Property("condition", enum=ENUMS["condition"]),
        Property("name", max_length=300),
        Property("settlement_id", "integer", minimum=1),
        *_BOOKKEEPING,
    ),
    geometry_types=(
        "POINT",
        "MULTIPOINT",
        "POLYGON",
        "MULTIPOLYGON",
        "LINESTRING",
        "MULTILINESTRING",
    ),
)

TRACES = Collection(
    name="traces",
    title="GPS traces",
    description="Cleaned GPS traces that mappers shared publicly (upload with POST /traces).",
    table=traces,
    properties=(
        Property("name", writable=False),
        Property("visibility", writable=False, enum=ENUMS["visibility"]),
        Property("settlement_id", "integer", writable=False),
        Property("points", "integer", writable=False),
        Property("length_m", "number", writable=False),
        Property("duration_s", "number", writable=False),
        Property("started_at", "datetime", writable=False),
        Property("ended_at", "datetime", writable=False),
        *_BOOKKEEPING,
    ),
    geometry_types=("MULTILINESTRING",),
    temporal="started_at",
    writable=False,
)

COLLECTIONS: dict[str, Collection] = {
    c.name: c for c in (SETTLEMENTS, STRUCTURES, FACILITIES, TRACES)
}


def get_collection(name: str) -> Collection | None:
    """The collection called ``name``, or None."""
    return COLLECTIONS.get(name)


# Household personal fields are never a property of a published collection.
assert not PERSONAL_HOUSEHOLD_FIELDS & {p.name for c in COLLECTIONS.values() for p in c.properties}
