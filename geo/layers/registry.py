"""The collections the service publishes: the one source of what a collection is.

Each :class:`Collection` names its table, its published properties (types,
enums, which are writable, which go into tiles), who may see which rows, and
its vector-tile zooms.  Routers, CQL2, exports, tiles and TileJSON all read it
here; no other module tests a collection by its name.

This registry is also the only source of table and column names that reach
SQL text: a request names a collection or property, and the name is looked up
here.  Anything not listed (personal household fields among them) cannot be
read, filtered on, sorted by or written through the layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Table, or_, true

from geo.core.auth import Principal
from geo.core.privacy import PERSONAL_HOUSEHOLD_FIELDS, Visibility
from geo.core.tables import facilities, settlements, structures, traces

__all__ = [
    "COLLECTIONS",
    "ENUMS",
    "REVIEW_PROPERTIES",
    "Collection",
    "Property",
    "TileZoom",
    "get_collection",
]

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
    "visibility": tuple(Visibility),
    "review_state": ("collected", "read_out", "verified", "disputed"),
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
    tile_sql: str | None = None

    def choice_error(
        self, value: str, *, ignore_case: bool = False, label: str | None = None
    ) -> str | None:
        """Why ``value`` is not one of the property's allowed values, or None when it is.

        ``label`` names the value in the message (default: the property's name).

        >>> Property("use", enum=("residential", "school")).choice_error("residental")
        "use must be one of residential, school; got 'residental'"
        """
        if self.enum is None:
            return None
        allowed = {v.casefold() for v in self.enum} if ignore_case else set(self.enum)
        if (value.casefold() if ignore_case else value) in allowed:
            return None
        return f"{label or self.name} must be one of {', '.join(self.enum)}; got {value!r}"

    @property
    def tile_type(self) -> str:
        """The TileJSON field type (``Number`` or ``String``)."""
        return "Number" if self.kind in {"integer", "number"} else "String"


@dataclass(frozen=True)
class TileZoom:
    """How a collection is drawn in the vector tiles: zooms and the fields a map needs.

    Attributes
    ----------
    minzoom
        First zoom at which the layer is drawn.
    fields
        Properties sent from ``detail_zoom`` on (``id`` is always sent).
    overview_fields
        The smaller set sent below ``detail_zoom`` (None: always ``fields``).
    detail_zoom
        Zoom from which ``fields`` are sent.
    description
        For TileJSON.
    """

    minzoom: int
    fields: tuple[str, ...]
    overview_fields: tuple[str, ...] | None = None
    detail_zoom: int = 0
    description: str = ""


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
    write_hint
        What to do instead, for a read-only collection.
    owner_column
        For owned records: the column naming the owner; rows are then seen
        per their ``visibility`` (:class:`~geo.core.privacy.Visibility`).
    private_fields
        Columns never shown in history or tiles (the owner of a trace).
    tile
        The collection's vector-tile layer, if it has one.
    """

    name: str
    title: str
    description: str
    table: Table
    properties: tuple[Property, ...]
    geometry_types: tuple[str, ...]
    temporal: str = "updated_at"
    writable: bool = True
    write_hint: str = ""
    multi: bool = False
    owner_column: str | None = None
    private_fields: tuple[str, ...] = ()
    tile: TileZoom | None = None
    _by_name: dict[str, Property] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({prop.name: prop for prop in self.properties})

    def find(self, name: str) -> Property | None:
        """The published property called ``name``, or None."""
        return self._by_name.get(name)

    @property
    def owned(self) -> bool:
        """Whether rows belong to an owner and are seen per their visibility."""
        return self.owner_column is not None

    def visible(self, user: Principal | None) -> ColumnElement[bool]:
        """SQL condition for the rows ``user`` may see (live rows only)."""
        live = self.table.c.deleted_at.is_(None)
        if self.owner_column is None:
            return live
        visibility = self.table.c.visibility
        if user is None:
            return live & (visibility == Visibility.PUBLIC.value)
        if user.at_least("admin"):
            return live & true()
        shared = (Visibility.PUBLIC.value, Visibility.COMMUNITY.value)
        return live & or_(visibility.in_(shared), self.table.c[self.owner_column] == user.name)

    def visible_sql(self, alias: str, user: Principal | None) -> tuple[str, dict[str, str]]:
        """:meth:`visible` as SQL text on ``alias`` and its parameters (psycopg's ``%(name)s``).

        The same rows as :meth:`visible` (tests/layers/test_page_text.py holds them side by
        side), for pages whose SQL is written without SQLAlchemy.
        """
        live = f"{alias}.deleted_at IS NULL"
        if self.owner_column is None or (user is not None and user.at_least("admin")):
            return live, {}
        if user is None:
            return f"{live} AND {alias}.visibility = '{Visibility.PUBLIC.value}'", {}
        shared = f"'{Visibility.PUBLIC.value}', '{Visibility.COMMUNITY.value}'"
        return (
            f"{live} AND ({alias}.visibility IN ({shared}) "
            f"OR {alias}.{self.owner_column} = %(viewer)s)",
            {"viewer": user.name},
        )

    def public_sql(self, alias: str) -> str:
        """SQL text (on ``alias``) for the rows anyone may see, live or not: tiles' filter."""
        if self.owner_column is None:
            return "TRUE"
        return f"{alias}.visibility = '{Visibility.PUBLIC.value}'"


_BOOKKEEPING = (
    Property("version", "integer", writable=False, description="Increases with every change"),
    Property("updated_at", "datetime", writable=False, description="Time of the last change"),
)

REVIEW_PROPERTIES = (
    Property(
        "review_state",
        enum=ENUMS["review_state"],
        default="collected",
        description="Community verification: collected, read_out (read out at a forum), "
        "verified, or disputed (say why in review_note); a replace without it starts again "
        "at collected",
    ),
    Property("review_note", max_length=2000, description="Why a record is disputed"),
)
"""Review state and note, shared by structures and households."""

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
    tile=TileZoom(
        minzoom=0,
        fields=("version", "name", "status", "county", "ward"),
        description="Settlement boundaries, by status",
    ),
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
        Property(
            "position_accuracy_m",
            "number",
            minimum=0,
            maximum=100_000,
            description="Accuracy (m) the phone reported when the structure was placed",
        ),
        *REVIEW_PROPERTIES,
        *_BOOKKEEPING,
    ),
    geometry_types=("POLYGON", "MULTIPOLYGON", "POINT"),
    tile=TileZoom(
        minzoom=14,
        fields=(
            "version",
            "settlement_id",
            "structure_number",
            "use",
            "storeys",
            "households",
            "wall_material",
            "roof_material",
            "review_state",
        ),
        overview_fields=("use",),
        detail_zoom=15,
        description="Structure footprints, by use (id and use only at zoom 14)",
    ),
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
    tile=TileZoom(
        minzoom=12,
        fields=("version", "settlement_id", "type", "condition", "name"),
        description="Shared facilities (water points, toilets, schools, clinics, drainage, roads)",
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
        Property(
            "length_m", "number", writable=False, tile_sql="round(t.length_m::numeric, 1)::float8"
        ),
        Property("duration_s", "number", writable=False),
        Property(
            "started_at",
            "datetime",
            writable=False,
            tile_sql="to_char(t.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
        ),
        Property("ended_at", "datetime", writable=False),
        *_BOOKKEEPING,
    ),
    geometry_types=("MULTILINESTRING",),
    temporal="started_at",
    writable=False,
    write_hint="upload GPX with POST /traces",
    owner_column="owner",
    private_fields=("owner",),
    tile=TileZoom(
        minzoom=10,
        fields=("name", "length_m", "points", "started_at"),
        description="Public GPS traces (cleaned lines)",
    ),
)

COLLECTIONS: dict[str, Collection] = {
    c.name: c for c in (SETTLEMENTS, STRUCTURES, FACILITIES, TRACES)
}


def get_collection(name: str) -> Collection | None:
    """The collection called ``name``, or None."""
    return COLLECTIONS.get(name)


# Household personal fields are never a property of a published collection.
assert not PERSONAL_HOUSEHOLD_FIELDS & {p.name for c in COLLECTIONS.values() for p in c.properties}
