"""Coordinate reference systems the service speaks (OGC API - Features Part 2).

Clients name a CRS by URI (``http://www.opengis.net/def/crs/EPSG/0/32737``),
by ``EPSG:32737``, or as CRS84.  Storage is EPSG:4326 with lon/lat order.
Per the OGC rules, EPSG:4326 *requested by URI* has latitude first, while
CRS84 (the default) has longitude first; :attr:`Crs.swap_axes` says which.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["CRS84", "METRIC_SRID", "STORAGE_SRID", "SUPPORTED", "Crs", "UnknownCrs", "parse_crs"]

STORAGE_SRID = 4326
"""Every geometry is stored in EPSG:4326 (WGS 84 lon/lat)."""

METRIC_SRID = 32737
"""Where metres are computed (areas, buffers, grids): WGS 84 / UTM zone 37S, Nairobi's zone."""
_EPSG_URI = "http://www.opengis.net/def/crs/EPSG/0/{code}"
_CRS84_URI = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"


@dataclass(frozen=True)
class Crs:
    """A supported CRS.

    Attributes
    ----------
    uri
        The OGC URI clients see in ``crs`` lists and ``Content-Crs``.
    srid
        The PostGIS SRID used to transform.
    swap_axes
        True when the CRS's axis order is latitude/northing first, so
        coordinates must be flipped relative to PostGIS's x/y order.
    label
        Short human name.
    """

    uri: str
    srid: int
    swap_axes: bool
    label: str


CRS84 = Crs(_CRS84_URI, 4326, False, "WGS 84 lon/lat (CRS84)")
SUPPORTED: tuple[Crs, ...] = (
    CRS84,
    Crs(_EPSG_URI.format(code=4326), 4326, True, "WGS 84 lat/lon (EPSG:4326)"),
    Crs(_EPSG_URI.format(code=3857), 3857, False, "Web Mercator (EPSG:3857)"),
    Crs(_EPSG_URI.format(code=32737), 32737, False, "WGS 84 / UTM zone 37S (EPSG:32737)"),
    Crs(_EPSG_URI.format(code=21037), 21037, False, "Arc 1960 / UTM zone 37S (EPSG:21037)"),
)
_BY_URI = {crs.uri: crs for crs in SUPPORTED}
_EPSG_SHORT = re.compile(r"^(?:EPSG|epsg):{1,2}(\d+)$")
_URN = re.compile(r"^urn:ogc:def:crs:EPSG:[\d.]*:(\d+)$", re.IGNORECASE)


class UnknownCrs(ValueError):
    """A CRS the service does not support; the message lists the supported ones."""

    def __init__(self, given: str) -> None:
        names = ", ".join(crs.uri for crs in SUPPORTED)
        super().__init__(f"unsupported CRS {given!r}; supported: {names}")
        self.given = given


def parse_crs(value: str | None, *, default: Crs = CRS84) -> Crs:
    """The :class:`Crs` a client names, or ``default`` when it names none.

    ``EPSG:4326`` written as a short code or URN is taken with the axis order
    of the URI form (latitude first), as OGC API Part 2 specifies.

    >>> parse_crs("EPSG:32737").srid
    32737
    >>> parse_crs("http://www.opengis.net/def/crs/OGC/1.3/CRS84").swap_axes
    False
    >>> parse_crs(None).uri.endswith("CRS84")
    True
    """
    if value is None or not value.strip():
        return default
    text = value.strip().strip("[]")
    if text in _BY_URI:
        return _BY_URI[text]
    if text.replace("https://", "http://") in _BY_URI:
        return _BY_URI[text.replace("https://", "http://")]
    if text.upper() in {"CRS84", "OGC:CRS84", "URN:OGC:DEF:CRS:OGC:1.3:CRS84"}:
        return CRS84
    match = _EPSG_SHORT.match(text) or _URN.match(text)
    if match:
        uri = _EPSG_URI.format(code=int(match.group(1)))
        if uri in _BY_URI:
            return _BY_URI[uri]
    raise UnknownCrs(value)
