"""Where the data lives: features far from every settlement, swapped axes, the mapped area.

A point typed as ``[-1.31, 36.78]`` instead of ``[36.78, -1.31]`` is a valid
coordinate (it lies in the sea off Somalia), so nothing else catches it; once
stored it stretches every extent and the map opens at world scale. The
settlements are the reference: a feature farther than the setting
``max_km_from_settlements`` from every settlement is refused unless the client
says ``force=true``, and the message names the swap when the flipped geometry
would lie among the settlements. The same reference answers the hint for a
bbox or an impact geometry that finds nothing, and the mapped area that the
web map opens on and TileJSON announces (settlements whose centres lie far
from the others' median do not stretch it).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

from geo.core.errors import InvalidInput

__all__ = [
    "Nearest",
    "NEAREST_QUERY",
    "check_placement",
    "far_message",
    "far_note",
    "mapped_area",
    "nearest_settlement",
    "swap_hint",
]

# The nearest live settlement to a geometry, in metres (geography); KNN on the
# index finds the candidate, and the distance is measured for it alone.  :flip
# swaps the geometry's x and y first (a swapped geometry outside the latitude
# range has no nearest settlement).  The distance is measured to the given
# geometry's (planar) closest point, never to the geometry itself: an edge between
# antipodal points (pole to pole, 180 degrees of longitude) has no one geodesic,
# and PostGIS refuses it or calls it 0 m from everything.  In psycopg's parameter
# style, for callers that send it in a pipeline with other statements (the trace
# upload).
NEAREST_QUERY = """
    WITH g AS MATERIALIZED (
        SELECT CASE WHEN %(flip)s THEN ST_FlipCoordinates(geom) ELSE geom END AS geom
        FROM (SELECT ST_SetSRID(ST_GeomFromEWKB(%(wkb)s), 4326) AS geom) AS given
    ), nearest AS MATERIALIZED (
        SELECT s.name, s.geom, g.geom AS given
        FROM settlements s, g
        WHERE s.deleted_at IS NULL
          AND (NOT %(flip)s OR (ST_YMin(g.geom) >= -90 AND ST_YMax(g.geom) <= 90))
        ORDER BY s.geom <-> g.geom
        LIMIT 1
    )
    SELECT name, ST_Distance(geom::geography, ST_ClosestPoint(given, geom)::geography)
        AS distance_m
    FROM nearest
    """
_NEAREST_SQL = text(NEAREST_QUERY.replace("%(wkb)s", ":wkb").replace("%(flip)s", ":flip"))


@dataclass(frozen=True)
class Nearest:
    """The settlement nearest to a geometry, as given and with its axes swapped."""

    name: str | None
    distance_m: float | None
    flipped_name: str | None
    flipped_distance_m: float | None

    def far(self, max_km: float) -> bool:
        """Whether the geometry lies farther than ``max_km`` from every settlement."""
        return self.distance_m is not None and self.distance_m > max_km * 1000

    def swapped(self, max_km: float) -> bool:
        """Whether the geometry is far and the swapped one lies among the settlements."""
        return (
            self.far(max_km)
            and self.flipped_distance_m is not None
            and self.flipped_distance_m <= max_km * 1000
        )


def nearest_settlement(conn: Connection, wkb: bytes, *, beyond_km: float = 0.0) -> Nearest:
    """The live settlement nearest to ``wkb`` (WKB or EWKB in EPSG:4326), as given and swapped.

    The swapped geometry is only looked up when the given one lies farther
    than ``beyond_km`` from every settlement (nothing asks for it otherwise:
    :meth:`Nearest.swapped` needs :meth:`Nearest.far`), so the usual geometry,
    among the settlements, costs one index look-up and one distance.
    """
    given = conn.execute(_NEAREST_SQL, {"wkb": wkb, "flip": False}).first()
    distance = None if given is None or given.distance_m is None else float(given.distance_m)
    flipped = None
    if distance is not None and distance > beyond_km * 1000:
        flipped = conn.execute(_NEAREST_SQL, {"wkb": wkb, "flip": True}).first()
    return Nearest(
        name=None if given is None else given.name,
        distance_m=distance,
        flipped_name=None if flipped is None else flipped.name,
        flipped_distance_m=None if flipped is None else float(flipped.distance_m),
    )


def _km(metres: float) -> str:
    return f"{metres / 1000:,.0f} km" if metres >= 10_000 else f"{metres / 1000:,.1f} km"


def check_placement(conn: Connection, wkb: bytes, *, max_km: float, field: str) -> None:
    """Refuse a geometry farther than ``max_km`` from every settlement.

    ``max_km`` of 0 turns the check off; so does an empty settlements table
    (there is nothing to compare with).

    Raises
    ------
    InvalidInput
        Naming the nearest settlement and its distance, the likely axis swap
        when the swapped geometry lies among the settlements, and ``force=true``.
    """
    if max_km <= 0:
        return
    nearest = nearest_settlement(conn, wkb, beyond_km=max_km)
    if not nearest.far(max_km):
        return
    assert nearest.distance_m is not None
    if nearest.swapped(max_km):
        assert nearest.flipped_distance_m is not None
        raise InvalidInput(
            f"{field} lies {_km(nearest.distance_m)} from the nearest settlement "
            f"({nearest.name}); with longitude and latitude swapped it would lie "
            f"{_km(nearest.flipped_distance_m)} from {nearest.flipped_name}. GeoJSON "
            "positions are [longitude, latitude]: swap them (or send ?force=true to store it "
            "as it is)",
            field=field,
            likely_swapped_axes=True,
            nearest_settlement_km=round(nearest.distance_m / 1000, 1),
        )
    raise InvalidInput(
        f"{field} lies {_km(nearest.distance_m)} from the nearest settlement ({nearest.name}), "
        f"farther than MAKAZI_MAX_KM_FROM_SETTLEMENTS ({max_km:g} km); check the coordinates "
        "and their CRS, or send ?force=true if it really lies there",
        field=field,
        likely_swapped_axes=False,
        nearest_settlement_km=round(nearest.distance_m / 1000, 1),
    )


def far_note(conn: Connection, wkb: bytes, *, what: str, max_km: float) -> str | None:
    """A warning for something stored although it lies far from every settlement, or None."""
    if max_km <= 0:
        return None
    nearest = conn.execute(_NEAREST_SQL, {"wkb": wkb, "flip": False}).first()
    if nearest is None:
        return None
    return far_message(nearest.name, nearest.distance_m, what=what, max_km=max_km)


def far_message(name: str, distance_m: float | None, *, what: str, max_km: float) -> str | None:
    """:func:`far_note`'s warning from the nearest settlement's name and distance."""
    if max_km <= 0 or distance_m is None or distance_m <= max_km * 1000:
        return None
    return (
        f"the {what} lies {_km(float(distance_m))} from the nearest settlement "
        f"({name}); it is kept, but check that it was recorded where you meant"
    )


def swap_hint(conn: Connection, wkb: bytes, *, what: str, max_km: float) -> str | None:
    """A hint for a query geometry that found nothing because its axes are swapped.

    ``None`` unless ``wkb`` lies far from every settlement and the swapped one among them.
    """
    if max_km <= 0:
        return None
    nearest = nearest_settlement(conn, wkb, beyond_km=max_km)
    if not nearest.swapped(max_km):
        return None
    return (
        f"nothing found: the {what} lies far from every settlement, but with x and y swapped "
        f"it would lie near {nearest.flipped_name}; coordinates are longitude first "
        "(or say the CRS's axis order)"
    )


# Settlements whose centre lies within :max_m of the median centre of all
# settlements make the mapped area; the rest (a typo, a far-away pilot) do not
# stretch it. With no settlement, every public layer's extent is used instead.
_AREA_SQL = text(
    """
    WITH live AS (
        SELECT geom, ST_PointOnSurface(geom) AS centre FROM settlements
        WHERE deleted_at IS NULL AND NOT ST_IsEmpty(geom)
    ), median AS (
        SELECT ST_SetSRID(ST_MakePoint(
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY ST_X(centre)),
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY ST_Y(centre))), 4326) AS m
        FROM live
    ), near AS (
        SELECT live.geom FROM live, median
        WHERE ST_DWithin(live.centre::geography, median.m::geography, :max_m)
    )
    SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e)
    FROM (SELECT coalesce((SELECT ST_Extent(geom) FROM near),
                          (SELECT ST_Extent(geom) FROM live)) AS e) x
    """
)


def mapped_area(conn: Connection, *, max_km: float) -> list[float] | None:
    """``[west, south, east, north]`` of the settlements near their median centre, or None.

    ``max_km`` (``max_km_from_settlements``; 0 counts every settlement) bounds
    how far a settlement's centre may lie from the median centre of all of them.
    """
    max_m = max_km * 1000 if max_km > 0 else 1e9
    row = conn.execute(_AREA_SQL, {"max_m": max_m}).one()
    return None if row[0] is None else [round(float(v), 6) for v in row]
