"""A walk around an area, in metric coordinates, turned into one valid polygon.

Pure geometry (shapely/numpy), no database: :mod:`geo.traces` feeds it the
track of a trace in UTM 37S and writes the result back.

Steps: measure the gap between the first and last fix (refuse when it is
over ``max_gap_m``); close the ring; simplify it with a tolerance in metres;
remove spikes (out-and-back excursions, where the walk turns back on itself);
node the ring at its self-intersections and keep the area it encloses (the
union of the faces); when that falls into separate parts, keep the largest
and say so.

>>> square = [(0, 0), (100, 0), (100, 100), (0, 100), (3, 4)]
>>> result = boundary_polygon(square, max_gap_m=10, simplify_m=0.5)
>>> round(result.closure_gap_m, 1), round(result.area_m2), result.polygon.is_valid
(5.0, 9850, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.geometry import LineString, MultiPolygon, Polygon

__all__ = ["Boundary", "OpenWalk", "TooFewPoints", "boundary_polygon", "remove_spikes"]

#: A vertex where the walk turns back by more than 180 - this many degrees is a spike.
SPIKE_ANGLE_DEG = 12.0


class OpenWalk(ValueError):
    """The walk's ends are further apart than allowed."""

    def __init__(self, gap_m: float, max_gap_m: float) -> None:
        super().__init__(
            f"the walk does not close: its first and last points are {gap_m:.1f} m apart "
            f"(max_gap_m is {max_gap_m:g})"
        )
        self.gap_m = gap_m
        self.max_gap_m = max_gap_m


class TooFewPoints(ValueError):
    """Not enough points, or no enclosed area, to make a polygon."""


@dataclass
class Boundary:
    """The polygon (in the input's metric CRS) and its measures."""

    polygon: Polygon
    area_m2: float
    perimeter_m: float
    closure_gap_m: float
    vertices: int
    warnings: list[str] = field(default_factory=list)


def remove_spikes(coords: np.ndarray, angle_deg: float = SPIKE_ANGLE_DEG) -> np.ndarray:
    """Drop vertices of a closed ring where the path turns back on itself.

    ``coords`` is an (n, 2) array whose last row repeats the first; so is the
    result.  Repeated vertices go too.

    >>> ring = np.array([(0, 0), (10, 0), (10, 10), (10, 30), (10.1, 10.5), (0, 10), (0, 0)])
    >>> remove_spikes(ring).tolist()
    [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [10.1, 10.5], [0.0, 10.0], [0.0, 0.0]]
    """
    points = [tuple(p) for p in np.asarray(coords, dtype=float)[:-1]]
    limit = math.radians(angle_deg)
    changed = True
    while changed and len(points) >= 3:
        changed = False
        kept: list[tuple[float, float]] = []
        n = len(points)
        i = 0
        while i < n:
            prev = kept[-1] if kept else points[i - 1]
            here = points[i]
            nxt = points[(i + 1) % n]
            ax, ay = prev[0] - here[0], prev[1] - here[1]
            bx, by = nxt[0] - here[0], nxt[1] - here[1]
            la, lb = math.hypot(ax, ay), math.hypot(bx, by)
            if la == 0 or lb == 0:
                changed = True
                i += 1
                continue
            cos = max(-1.0, min(1.0, (ax * bx + ay * by) / (la * lb)))
            if math.acos(cos) < limit:
                changed = True
                i += 1
                continue
            kept.append(here)
            i += 1
        points = kept
    if not points:
        return np.empty((0, 2))
    return np.array([*points, points[0]], dtype=float)


def boundary_polygon(
    coords: Sequence[tuple[float, float]] | np.ndarray,
    *,
    max_gap_m: float,
    simplify_m: float,
    spike_angle_deg: float = SPIKE_ANGLE_DEG,
) -> Boundary:
    """The polygon a walk encloses.

    Parameters
    ----------
    coords
        The walk's points in order, in a metric CRS (UTM).
    max_gap_m
        Largest distance between the first and last point that still counts
        as a closed walk.
    simplify_m
        Douglas-Peucker tolerance in metres (0 keeps every vertex).

    Raises
    ------
    OpenWalk
        The ends are further apart than ``max_gap_m``.
    TooFewPoints
        Fewer than 4 points, or nothing enclosed.
    """
    array = np.asarray(coords, dtype=float)
    if array.ndim != 2 or len(array) < 4:
        raise TooFewPoints("a boundary needs a walk of at least 4 track points")
    gap = float(math.hypot(*(array[0] - array[-1])))
    if gap > max_gap_m:
        raise OpenWalk(gap, max_gap_m)
    ring = np.vstack([array, array[:1]])
    line = LineString(ring)
    if simplify_m > 0:
        simplified = shapely.simplify(line, simplify_m, preserve_topology=False)
        ring = shapely.get_coordinates(simplified)
    ring = remove_spikes(ring, spike_angle_deg)
    if len(ring) < 4:
        raise TooFewPoints("the walk encloses no area (it goes out and back along one line)")
    noded = shapely.node(LineString(ring))
    faces = shapely.polygonize(shapely.get_parts(noded))
    parts = [p for p in shapely.get_parts(faces) if p.area > 0]
    if not parts:
        raise TooFewPoints("the walk encloses no area")
    area = shapely.union_all(parts)
    warnings: list[str] = []
    if isinstance(area, MultiPolygon):
        pieces = sorted(area.geoms, key=lambda p: p.area, reverse=True)
        dropped = sum(p.area for p in pieces[1:])
        warnings.append(
            f"the walk crosses itself into {len(pieces)} separate areas; kept the largest "
            f"and left out {dropped:.0f} m² in the others"
        )
        area = pieces[0]
    polygon = shapely.make_valid(shapely.normalize(area))
    if not isinstance(polygon, Polygon):
        polys = [p for p in shapely.get_parts(polygon) if isinstance(p, Polygon)]
        polygon = max(polys, key=lambda p: p.area)
    if len(array) > len(ring):
        removed = len(array) + 1 - len(ring)
        warnings.append(
            f"simplified with a {simplify_m:g} m tolerance and spikes removed: "
            f"{removed} of {len(array)} points left out"
        )
    return Boundary(
        polygon=polygon,
        area_m2=float(polygon.area),
        perimeter_m=float(polygon.length),
        closure_gap_m=gap,
        vertices=len(polygon.exterior.coords),
        warnings=warnings,
    )
