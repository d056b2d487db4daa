"""Typed contracts of the OGC API documents: links, landing page, conformance,
collections, queryables, feature history and the bulk-create summary.

The documents themselves are built by :mod:`geo.layers.collections_meta`,
:func:`geo.layers.writes.feature_history` and the HTTP routers; these models
describe them for ``/api`` and for the tests (see :mod:`geo.core.documents`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from geo.core.documents import Document, Omitted, omitted

__all__ = [
    "CollectionDocument",
    "CollectionList",
    "Conformance",
    "CreatedFeature",
    "Extent",
    "FeatureChange",
    "FeaturesCreated",
    "History",
    "HistoryEntry",
    "LandingPage",
    "Link",
    "Queryable",
    "QueryableItems",
    "Queryables",
    "SpatialExtent",
]


class Link(Document):
    """A link (RFC 8288 in JSON, as OGC API uses it)."""

    href: str = Field(description="Absolute URL")
    rel: str = Field(description="Relation type, e.g. self, next, alternate, items")
    type: str | Omitted = omitted("Media type of the target")
    title: str | Omitted = omitted()


class LandingPage(Document):
    """``GET /``: the OGC API landing page (JSON; HTML for browsers)."""

    title: str
    description: str
    links: list[Link]


class Conformance(Document):
    """``GET /conformance``: the conformance classes this server implements."""

    conformsTo: list[str]  # noqa: N815 (OGC member name)


class SpatialExtent(Document):
    """Bounding box of a collection's live features (CRS84)."""

    bbox: list[list[float]] = Field(description="One box: [[minx, miny, maxx, maxy]]")
    crs: str


class Extent(Document):
    spatial: SpatialExtent


class CollectionDocument(Document):
    """``GET /collections/{collectionId}``: one collection."""

    id: str
    title: str
    description: str
    itemType: Literal["feature"]  # noqa: N815
    crs: list[str] = Field(description="CRS URIs the items can be answered in")
    storageCrs: str  # noqa: N815
    extent: Extent
    links: list[Link]


class CollectionList(Document):
    """``GET /collections``: every published collection."""

    collections: list[CollectionDocument]
    crs: list[str]
    links: list[Link]


class QueryableItems(Document):
    type: str


class Queryable(Document):
    """One queryable property: a JSON Schema of its values."""

    title: str
    type: Literal["string", "integer", "number", "array"] | Omitted = omitted(
        "Absent for the geometry"
    )
    format: str | Omitted = omitted("``date-time`` or ``geometry-<type>``")
    items: QueryableItems | Omitted = omitted()
    enum: list[str] | Omitted = omitted()
    description: str | Omitted = omitted()
    minimum: float | Omitted = omitted()
    maximum: float | Omitted = omitted()
    readOnly: bool | Omitted = omitted()  # noqa: N815


class Queryables(Document):
    """``GET /collections/{collectionId}/queryables``: a JSON Schema (OGC API - Features 3)."""

    schema_uri: str = Field(alias="$schema")
    id: str = Field(alias="$id")
    type: Literal["object"]
    title: str
    properties: dict[str, Queryable]
    additionalProperties: bool  # noqa: N815


class FeatureChange(Document):
    """How one property (or the geometry) changed in a version."""

    from_: Any = Field(alias="from", description="The value before (null when it had none)")
    to: Any = Field(description="The value after (null when cleared or purged)")


class HistoryEntry(Document):
    """One recorded version of a feature."""

    version: int
    changed_at: datetime
    changed_by: str | None
    action: Literal["create", "update", "delete", "restore", "purge"]
    changes: dict[str, FeatureChange] = Field(
        description="Changed members by name; private fields are left out"
    )


class History(Document):
    """``GET /collections/{collectionId}/items/{featureId}/history``, oldest version first."""

    versions: list[HistoryEntry]


class CreatedFeature(Document):
    id: int
    version: int
    href: str


class FeaturesCreated(Document):
    """``POST /collections/{collectionId}/items`` with a FeatureCollection: what was created."""

    numberCreated: int  # noqa: N815
    created: list[CreatedFeature]
