"""Cleaning GPS points: speed spikes, duplicates and bad fixes, each drop counted by reason."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from geo.traces.gpx import Point

__all__ = ["EARTH_RADIUS_M", "Cleaner", "Dropped", "clean_track"]

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

    def add_many(
        self,
        kind: str,
        reason: str,
        count: int,
        *,
        index: int,
        track: int | None,
        segment: int | None,
    ) -> None:
        """Count ``count`` dropped points at once, the first of them at ``index``."""
        self.add(kind, reason, index=index, track=track, segment=segment)
        self.groups[(kind, reason)]["count"] += count - 1

    def total(self, kind: str | None = None) -> int:
        """How many points were dropped (of ``kind``, or all)."""
        return sum(g["count"] for (k, _), g in self.groups.items() if kind is None or k == kind)

    def as_list(self) -> list[dict[str, Any]]:
        """``[{kind, reason, count, first}]``, largest group first."""
        return sorted(self.groups.values(), key=lambda g: (-g["count"], g["kind"], g["reason"]))


#: Safety factor on the speed pre-check's bound, against rounding.
_BOUND_MARGIN = 0.999


def _distance_m(a_lat: float, a_lon: float, b_lat: float, b_lon: float) -> float:
    """Great-circle distance (haversine): only used to judge speeds."""
    lat1, lat2 = math.radians(a_lat), math.radians(b_lat)
    dlat = lat2 - lat1
    dlon = math.radians(b_lon - a_lon)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def _too_fast(
    max_speed: float,
    a_lat: float,
    a_lon: float,
    a_epoch: float | None,
    b_lat: float,
    b_lon: float,
    b_epoch: float | None,
) -> bool:
    """Whether going from a to b takes more than ``max_speed`` (never without both times)."""
    if a_epoch is None or b_epoch is None:
        return False
    seconds = b_epoch - a_epoch
    if seconds <= 0:
        return False
    # Cheap first: the great circle is never longer than R * hypot(dlat, dlon)
    # (radians), so well under that bound no haversine is needed.
    reach = max_speed * seconds * _BOUND_MARGIN
    if EARTH_RADIUS_M * math.radians(abs(b_lat - a_lat) + abs(b_lon - a_lon)) <= reach:
        return False
    return _distance_m(a_lat, a_lon, b_lat, b_lon) / seconds > max_speed


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
        if a is None:
            return False
        return _too_fast(self.max_speed, a.lat, a.lon, a.epoch, b.lat, b.lon, b.epoch)

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


Floats = npt.NDArray[np.float64]
Indexes = npt.NDArray[np.intp]


def clean_track(
    lat: Floats,
    lon: Floats,
    epoch: Floats,
    hdop: Floats,
    *,
    max_speed_mps: float,
    max_hdop: float,
    carried: int = 0,
    final: bool = True,
) -> tuple[npt.NDArray[np.bool_], list[tuple[str, Indexes]], Indexes]:
    """What :class:`Cleaner` does to a segment's points, on arrays (NaN: no time, no hdop).

    The poor fixes and duplicates in bulk; the speed check in bulk where a
    conservative bound settles it, point by point (with the cleaner's own
    arithmetic) from a pair it cannot settle until the cleaner is back to
    its plain state.

    A segment may come in pieces: the first ``carried`` points are the
    cleaner's state after the pieces before (the last kept point, then a
    pending jump if any), as the previous call answered them.  Unless
    ``final``, a jump still pending at the end is left undecided.

    Returns
    -------
    keep
        The points now known to be kept (a carried kept point not again).
    drops
        The dropped points' positions by reason (hdop, duplicate, speed), in order.
    carry
        The positions of the state to carry into the next piece.
    """
    n = len(lat)
    keep = np.zeros(n, dtype=bool)
    poor = np.flatnonzero(hdop > max_hdop)
    rest = np.flatnonzero(~(hdop > max_hdop))
    la, lo, ep = lat[rest], lon[rest], epoch[rest]
    same_time = (ep[1:] == ep[:-1]) | (np.isnan(ep[1:]) & np.isnan(ep[:-1]))
    repeat = np.zeros(len(rest), dtype=bool)
    repeat[1:] = (la[1:] == la[:-1]) & (lo[1:] == lo[:-1]) & same_time
    duplicates = rest[repeat]
    order = rest[~repeat]  # the points the speed check sees, in order (carried ones first)
    la, lo, ep = lat[order], lon[order], epoch[order]
    seconds = ep[1:] - ep[:-1]
    bound = EARTH_RADIUS_M * np.radians(np.abs(la[1:] - la[:-1]) + np.abs(lo[1:] - lo[:-1]))
    with np.errstate(invalid="ignore"):
        unsure = (seconds > 0) & (bound > max_speed_mps * seconds * _BOUND_MARGIN * (1 - 1e-9))
    # pair k-1 -> k is unsure where unsure[k - 1]; elsewhere it is not too fast
    starts = (np.flatnonzero(unsure) + 1).tolist()
    spikes: list[int] = []
    kept_order = np.ones(len(order), dtype=bool)

    def fast(a: int, b: int) -> bool:
        if a < 0:
            return False
        t_a, t_b = float(ep[a]), float(ep[b])
        return _too_fast(
            max_speed_mps,
            float(la[a]),
            float(lo[a]),
            None if t_a != t_a else t_a,
            float(la[b]),
            float(lo[b]),
            None if t_b != t_b else t_b,
        )

    k_done = -1
    end_state: tuple[int, int] | None = None
    for start in ([2] if carried == 2 else []) + starts:
        if start <= k_done:
            continue
        # the state before ``start``: a carried jump pending, or else the plain state
        # (nothing pending, the previous point kept)
        prev, cand, k = (0, 1, 2) if start == 2 and carried == 2 else (start - 1, -1, start)
        while k < len(order):
            if cand >= 0:
                if fast(cand, k) and not fast(prev, k):
                    spikes.append(cand)
                    kept_order[cand] = False
                else:
                    prev = cand
                cand = -1
            if fast(prev, k):
                cand = k
            else:
                prev = k
                if k + 1 >= len(order) or not unsure[k]:
                    break  # plain again: the next pair is settled in bulk
            k += 1
        if k >= len(order):
            end_state = (prev, cand)
        k_done = k
    prev, cand = end_state if end_state is not None else (len(order) - 1, -1)
    carry = [prev] if prev >= 0 else []
    if cand >= 0:
        kept_order[cand] = False
        if final:  # the segment ended with a jump pending
            spikes.append(cand)
        else:
            carry.append(cand)
    keep[order[kept_order]] = True
    keep[: min(carried, 1)] = False  # a carried kept point was kept before
    speed = order[np.array(spikes, dtype=np.intp)]
    hdop_reason = f"hdop over {max_hdop:g}"
    speed_reason = f"speed jump over {max_speed_mps:g} m/s"
    drops = [
        (hdop_reason, poor),
        ("duplicate of the previous point", duplicates),
        (speed_reason, speed),
    ]
    return keep, drops, order[np.array(carry, dtype=np.intp)]
