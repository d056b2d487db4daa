"""Cleaning GPS points: speed spikes, duplicates and bad fixes, each drop counted by reason."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from geo.traces.gpx import Point

__all__ = ["EARTH_RADIUS_M", "Cleaner", "Dropped"]

EARTH_RADIUS_M = 6_371_008.8


class Dropped:
    """Points left out, grouped by (kind, reason), with the first example."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str], dict[str, Any]] = {}

    def add(
        self,
        kind: str,
        reason: str,
        *,
        index: int,
        track: int | None,
        segment: int | None,
        value: str | None = None,
    ) -> None:
        """Count one dropped point."""
        group = self.groups.get((kind, reason))
        if group is None:
            first: dict[str, Any] = {"index": index, "track": track, "segment": segment}
            if value is not None:
                first["value"] = value[:80]
            self.groups[(kind, reason)] = {
                "kind": kind,
                "reason": reason,
                "count": 1,
                "first": first,
            }
        else:
            group["count"] += 1

    def total(self, kind: str | None = None) -> int:
        """How many points were dropped (of ``kind``, or all)."""
        return sum(g["count"] for (k, _), g in self.groups.items() if kind is None or k == kind)

    def as_list(self) -> list[dict[str, Any]]:
        """``[{kind, reason, count, first}]``, largest group first."""
        return sorted(self.groups.values(), key=lambda g: (-g["count"], g["kind"], g["reason"]))


#: Safety factor on the speed pre-check's bound, against rounding.
_BOUND_MARGIN = 0.999


def _distance_m(a: Point, b: Point) -> float:
    """Great-circle distance (haversine): only used to judge speeds."""
    lat1, lat2 = math.radians(a.lat), math.radians(b.lat)
    dlat = lat2 - lat1
    dlon = math.radians(b.lon - a.lon)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


class Cleaner:
    """Clean the track points of one segment at a time, with one point of look-ahead.

    Dropped: a point whose reported hdop is over ``max_hdop``; a point equal
    to the previous one (same position and time); an isolated spike (reached
    and left at more than ``max_speed_mps`` while its neighbours are within
    reach of each other); and a last point reached at an impossible speed.
    A sustained jump (the phone really moved, e.g. after a gap) is kept.
    Points without time are never judged on speed.
    """

    def __init__(self, *, max_speed_mps: float, max_hdop: float, dropped: Dropped) -> None:
        self.max_speed = max_speed_mps
        self.max_hdop = max_hdop
        self.dropped = dropped
        self.speed_reason = f"speed jump over {max_speed_mps:g} m/s"
        self.hdop_reason = f"hdop over {max_hdop:g}"
        self.prev: Point | None = None
        self.cand: Point | None = None

    def _drop(self, point: Point, reason: str) -> None:
        self.dropped.add(
            point.kind, reason, index=point.index, track=point.track, segment=point.segment
        )

    def _fast(self, a: Point | None, b: Point) -> bool:
        if a is None or a.epoch is None or b.epoch is None:
            return False
        seconds = b.epoch - a.epoch
        if seconds <= 0:
            return False
        # Cheap first: the great circle is never longer than R * hypot(dlat, dlon)
        # (radians), so well under that bound no haversine is needed.
        reach = self.max_speed * seconds * _BOUND_MARGIN
        if EARTH_RADIUS_M * math.radians(abs(b.lat - a.lat) + abs(b.lon - a.lon)) <= reach:
            return False
        return _distance_m(a, b) / seconds > self.max_speed

    def push(self, point: Point) -> Iterator[Point]:
        """Take the next point; yield the points now known to be kept."""
        if point.hdop is not None and point.hdop > self.max_hdop:
            self._drop(point, self.hdop_reason)
            return
        last = self.cand or self.prev
        if (
            last is not None
            and last.lat == point.lat
            and last.lon == point.lon
            and last.epoch == point.epoch
        ):
            self._drop(point, "duplicate of the previous point")
            return
        cand = self.cand
        if cand is not None:
            self.cand = None
            if self._fast(cand, point) and not self._fast(self.prev, point):
                self._drop(cand, self.speed_reason)
            else:
                self.prev = cand
                yield cand
        if self._fast(self.prev, point):
            self.cand = point
        else:
            self.prev = point
            yield point

    def end_segment(self) -> None:
        """The segment ended: a pending jump has nothing after it, so it is dropped."""
        if self.cand is not None:
            self._drop(self.cand, self.speed_reason)
        self.cand = None
        self.prev = None
