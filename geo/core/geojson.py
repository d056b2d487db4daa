"""GeoJSON geometry type names and their PostGIS counterparts (RFC 7946)."""

from __future__ import annotations

__all__ = ["GEOJSON_TO_POSTGIS"]

#: Every GeoJSON geometry type, in the RFC's order, with PostGIS's ``GeometryType`` name.
GEOJSON_TO_POSTGIS: dict[str, str] = {
    "Point": "POINT",
    "MultiPoint": "MULTIPOINT",
    "LineString": "LINESTRING",
    "MultiLineString": "MULTILINESTRING",
    "Polygon": "POLYGON",
    "MultiPolygon": "MULTIPOLYGON",
    "GeometryCollection": "GEOMETRYCOLLECTION",
}
