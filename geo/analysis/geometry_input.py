"""The geometry a planner sends to an analysis: parsed, checked, reprojected.

A client sends a GeoJSON geometry (or a Feature, or a FeatureCollection whose
geometries are combined), optionally in another CRS named by ``crs`` (any CRS
of :mod:`geo.crs`).  :func:`parse_geometry` returns it as 2D WKB in EPSG:4326,
or raises :class:`~geo.core.errors.InvalidInput` naming what is wrong: a missing or
unknown ``type``, malformed or non-finite coordinates, an empty or invalid
geometry, too many vertices, coordinates outside the CRS, or an area (after
buffering) above the limit.  Limits come from settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import shapely
from pyproj import Transformer
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from geo.core.crs import CRS84, METRIC_SRID, STORAGE_SRID, UnknownCrs, parse_crs
from geo.core.errors import InvalidInput
from geo.core.geojson import GEOJSON_TO_POSTGIS

__all__ = ["AnalysisGeometry", "parse_geometry"]

_TYPES = tuple(GEOJSON_TO_POSTGIS)
_AREAL = ("Polygon", "MultiPolygon")


@dataclass(frozen=True)
class AnalysisGeometry:
    """A checked input geometry.

    Attributes
    ----------
    wkb
        2D WKB in EPSG:4326 (longitude, latitude).
    geom_type
        The GeoJSON type.
    vertices
        Number of coordinates.
    buffered_area_m2
        Area of the geometry buffered by the requested distance, in UTM 37S
        (the figure the area limit is checked against).
    """

    wkb: bytes
    geom_type: str
    vertices: int
    buffered_area_m2: float


def _bad(detail: str, field: str = "geometry") -> InvalidInput:
    return InvalidInput(f"{field}: {detail}", field=field)


def _unwrap(value: Any) -> dict[str, Any]:
    """A geometry object from a geometry, Feature or FeatureCollection."""
    if not isinstance(value, dict):
        raise _bad("must be a GeoJSON geometry object")
    kind = value.get("type")
    if kind == "Feature":
        geometry = value.get("geometry")
        if not isinstance(geometry, dict):
            raise _bad("the Feature has no geometry")
        return geometry
    if kind == "FeatureCollection":
        features = value.get("features")
        if not isinstance(features, list) or not features:
            raise _bad("the FeatureCollection has no features")
        geometries = []
        for index, feature in enumerate(features):
            geometry = feature.get("geometry") if isinstance(feature, dict) else None
            if not isinstance(geometry, dict):
                raise _bad(f"feature {index} has no geometry", f"geometry.features[{index}]")
            geometries.append(geometry)
        return {"type": "GeometryCollection", "geometries": geometries}
    return value


def _shape(geometry: dict[str, Any]) -> BaseGeometry:
    kind = geometry.get("type")
    if kind not in _TYPES:
        raise _bad(f"unknown geometry type {kind!r}; one of {', '.join(_TYPES)}", "geometry.type")
    key = "geometries" if kind == "GeometryCollection" else "coordinates"
    if key not in geometry:
        raise _bad(f"a {kind} needs '{key}'", f"geometry.{key}")
    try:
        geom = shape(geometry)
    except Exception as exc:  # shapely and numpy raise many kinds for malformed coordinates
        raise _bad(
            f"malformed {kind} coordinates: each position must be [x, y] or [x, y, z] numbers, "
            "nested as GeoJSON nests them for that type",
            f"geometry.{key}",
        ) from exc
    return shapely.force_2d(geom)


def _check_finite(geom: BaseGeometry) -> None:
    if not _finite(geom):
        raise _bad("coordinates must be finite numbers", "geometry.coordinates")


def parse_geometry(
    geometry: Any,
    *,
    crs: str | None,
    buffer_m: float,
    max_vertices: int,
    max_area_km2: float,
) -> AnalysisGeometry:
    """Check an input geometry and return it in EPSG:4326.

    Parameters
    ----------
    geometry
        Decoded GeoJSON: a geometry, a Feature or a FeatureCollection.
    crs
        The CRS of its coordinates (URI, ``EPSG:n`` or ``CRS84``); None means CRS84.
        EPSG:4326 named by URI or code has latitude first, as OGC API Part 2 says.
    buffer_m
        The buffer the analysis will apply, in metres (0 for none); the area
        limit applies to the buffered geometry.
    max_vertices, max_area_km2
        Limits (settings ``analysis_max_vertices``, ``analysis_max_area_km2``).

    Examples
    --------
    >>> g = parse_geometry({"type": "LineString", "coordinates": [[36.78, -1.31], [36.79, -1.31]]},
    ...                    crs=None, buffer_m=30, max_vertices=100, max_area_km2=1)
    >>> g.geom_type, g.vertices, round(g.buffered_area_m2 / 1000)
    ('LineString', 2, 70)
    >>> parse_geometry({"type": "Polygon", "coordinates": []}, crs=None, buffer_m=30,
    ...                max_vertices=100, max_area_km2=1)
    Traceback (most recent call last):
    geo.core.errors.InvalidInput: geometry: is empty
    """
    if geometry is None:
        raise _bad("is required")
    try:
        source = parse_crs(crs, default=CRS84)
    except UnknownCrs as exc:
        raise InvalidInput(f"crs: {exc}", field="crs") from exc
    geom = _shape(_unwrap(geometry))
    kind = geom.geom_type
    if geom.is_empty:
        raise _bad("is empty")
    _check_finite(geom)
    vertices = int(shapely.get_num_coordinates(geom))
    if vertices > max_vertices:
        raise _bad(
            f"has {vertices} vertices, above the limit of {max_vertices} "
            "(setting MAKAZI_ANALYSIS_MAX_VERTICES)"
        )
    if not geom.is_valid:
        raise _bad(f"is not valid: {shapely.is_valid_reason(geom)}")
    if source.swap_axes:
        geom = shapely.transform(geom, lambda xy: xy[:, ::-1])
    if source.srid == 4326:
        lonlat = geom
        coords = shapely.get_coordinates(lonlat)
        if (abs(coords[:, 0]) > 180).any() or (abs(coords[:, 1]) > 90).any():
            raise _bad(
                "coordinates are outside longitude -180..180 / latitude -90..90 "
                "(send crs for projected coordinates)",
                "geometry.coordinates",
            )
    else:
        to_lonlat = Transformer.from_crs(source.srid, 4326, always_xy=True)
        lonlat = shapely.transform(geom, lambda xy: _stack(to_lonlat.transform(*xy.T)))
        if not _finite(lonlat):
            raise _bad(f"coordinates cannot be projected from {source.label}")
    to_utm = Transformer.from_crs(STORAGE_SRID, METRIC_SRID, always_xy=True)
    utm = shapely.transform(lonlat, lambda xy: _stack(to_utm.transform(*xy.T)))
    if not _finite(utm):
        raise _bad("coordinates are too far from Kenya to measure in UTM 37S")
    buffered = utm.buffer(buffer_m) if buffer_m > 0 else utm
    area_m2 = float(buffered.area)
    if area_m2 > max_area_km2 * 1e6:
        field = "buffer_m" if buffer_m > 0 and utm.area <= max_area_km2 * 1e6 else "geometry"
        raise _bad(
            f"the analysed area is {area_m2 / 1e6:.1f} km², above the limit of "
            f"{max_area_km2:g} km² (setting MAKAZI_ANALYSIS_MAX_AREA_KM2)",
            field,
        )
    if buffer_m <= 0 and kind not in _AREAL:
        raise _bad(f"a {kind} covers no area: give buffer_m > 0", "buffer_m")
    return AnalysisGeometry(
        wkb=shapely.to_wkb(lonlat, output_dimension=2),
        geom_type=kind,
        vertices=vertices,
        buffered_area_m2=area_m2,
    )


def _stack(xy: tuple[Any, Any]) -> Any:
    import numpy as np

    return np.column_stack(xy)


def _finite(geom: BaseGeometry) -> bool:
    import numpy as np

    return bool(np.isfinite(shapely.get_coordinates(geom)).all())
