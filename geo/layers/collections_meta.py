"""Collection metadata: extents, the collection document and queryables."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, text

from geo.core.crs import CRS84, SUPPORTED
from geo.layers.registry import COLLECTIONS, Collection

__all__ = ["extents", "describe", "queryables", "EXTENT_CACHE_SECONDS"]

EXTENT_CACHE_SECONDS = 60.0
EXACT_EXTENT_ROWS = 200_000
_JSON_TYPES = {
    "string": "string",
    "integer": "integer",
    "number": "number",
    "datetime": "string",
    "string-array": "array",
}
_GEOMETRY_SCHEMA = {
    "POINT": "geometry-point",
    "MULTIPOINT": "geometry-multipoint",
    "LINESTRING": "geometry-linestring",
    "MULTILINESTRING": "geometry-multilinestring",
    "POLYGON": "geometry-polygon",
    "MULTIPOLYGON": "geometry-multipolygon",
}


def extents(conn: Connection, cache: dict[str, Any]) -> dict[str, list[float] | None]:
    """Bounding boxes of every collection's live rows (cached for a minute).

    Small tables get an exact ``ST_Extent``; large ones the planner statistics'
    ``ST_EstimatedExtent``, so a million rows cost nothing.
    """
    now = time.monotonic()
    if cache.get("expires", 0.0) > now:
        cached: dict[str, list[float] | None] = cache["value"]
        return cached
    result: dict[str, list[float] | None] = {}
    for collection in COLLECTIONS.values():
        name = collection.table.name  # from the registry, never from a request
        rows = conn.execute(
            text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:t)"), {"t": name}
        ).scalar()
        if rows is not None and rows > EXACT_EXTENT_ROWS:
            box = "ST_EstimatedExtent('public', :t, 'geom')"
            source = ""
        else:
            box = "ST_Extent(geom)"
            source = f" FROM {name} WHERE deleted_at IS NULL"
        row = conn.execute(
            text(
                f"SELECT ST_XMin(b), ST_YMin(b), ST_XMax(b), ST_YMax(b) "  # noqa: S608
                f"FROM (SELECT {box} AS b{source}) x"
            ),
            {"t": name},
        ).first()
        if row is not None and row[0] is not None:
            result[collection.name] = [round(float(v), 7) for v in row]
        else:
            result[collection.name] = None
    cache["value"] = result
    cache["expires"] = now + EXTENT_CACHE_SECONDS
    return result


def describe(collection: Collection, bbox: list[float] | None, *, base: str) -> dict[str, Any]:
    """The OGC collection document (``/collections/{c}``)."""
    path = f"{base}/collections/{collection.name}"
    document: dict[str, Any] = {
        "id": collection.name,
        "title": collection.title,
        "description": collection.description,
        "itemType": "feature",
        "crs": [crs.uri for crs in SUPPORTED],
        "storageCrs": CRS84.uri,
        "extent": {
            "spatial": {
                "bbox": [bbox or [-180.0, -90.0, 180.0, 90.0]],
                "crs": CRS84.uri,
            },
        },
        "links": [
            {"href": path, "rel": "self", "type": "application/json", "title": collection.title},
            {
                "href": f"{path}/items",
                "rel": "items",
                "type": "application/geo+json",
                "title": f"{collection.title} as GeoJSON",
            },
            {
                "href": f"{path}/queryables",
                "rel": "http://www.opengis.net/def/rel/ogc/1.0/queryables",
                "type": "application/schema+json",
                "title": "Queryables",
            },
        ],
    }
    return document


def queryables(collection: Collection, self_href: str) -> dict[str, Any]:
    """JSON Schema of a collection's queryables (OGC API - Features Part 3)."""
    properties: dict[str, Any] = {
        "id": {"title": "Feature id", "type": "integer"},
        "geometry": {
            "title": "Geometry",
            "format": _GEOMETRY_SCHEMA.get(collection.geometry_types[0], "geometry-any")
            if len(collection.geometry_types) <= 2
            else "geometry-any",
        },
    }
    for prop in collection.properties:
        schema: dict[str, Any] = {
            "title": prop.name.replace("_", " "),
            "type": _JSON_TYPES[prop.kind],
        }
        if prop.kind == "datetime":
            schema["format"] = "date-time"
        if prop.kind == "string-array":
            schema["items"] = {"type": "string"}
        if prop.enum:
            schema["enum"] = list(prop.enum)
        if prop.description:
            schema["description"] = prop.description
        if prop.minimum is not None:
            schema["minimum"] = prop.minimum
        if prop.maximum is not None:
            schema["maximum"] = prop.maximum
        if not prop.writable:
            schema["readOnly"] = True
        properties[prop.name] = schema
    return {
        "$schema": "https://json-schema.org/draft/2019-09/schema",
        "$id": self_href,
        "type": "object",
        "title": collection.title,
        "properties": properties,
        "additionalProperties": False,
    }
