"""Synthetic phone walks as GPX: what a mapper's phone records on foot.

A walk at about 1.4 m/s with one fix a second, its heading drifting and now
and then turning sharply, every fix scattered by GPS noise of a few metres;
with pauses (the phone repeats the same fix while time moves on), occasional
duplicate fixes (same time, same place) and fixes sharing a timestamp, rare
speed spikes (one fix hundreds of metres off) and rare poor fixes (hdop over
20).  Used by the GPX benchmark and by the tests that compare cleaning
implementations; deterministic for a seed.

>>> walk = phone_walk(500, seed=3)
>>> len(walk.lon), walk.epoch.dtype.kind
(500, 'f')
>>> gpx_bytes(walk).startswith(b"<?xml")
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Walk", "gpx_bytes", "phone_walk"]

_METRES_PER_DEGREE = 111_320.0
_START = (36.7800, -1.3100)  # Kibera
_T0 = 1_714_550_400  # 2024-05-01T08:00:00Z

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Walk:
    """One walk's fixes as arrays (degrees, metres, seconds since 1970, hdop)."""

    lon: Floats
    lat: Floats
    ele: Floats
    epoch: Floats
    hdop: Floats


def phone_walk(
    n: int,
    *,
    seed: int,
    start: tuple[float, float] = _START,
    jitter_m: float = 3.0,
    spike_every: int = 2_000,
    bad_hdop_every: int = 700,
) -> Walk:
    """``n`` fixes of a walk from ``start`` (lon, lat); see the module doc."""
    rng = np.random.default_rng(seed)
    dt = np.ones(n)
    # Pauses: runs of fixes at the same place while the clock goes on.
    moving = np.ones(n, dtype=bool)
    for begin in rng.integers(0, n, size=max(1, n // 600)):
        moving[begin : begin + int(rng.integers(10, 120))] = False
    # Fixes that share the previous one's timestamp (about 1 in 400).
    dt[rng.random(n) < 0.0025] = 0.0
    heading = np.cumsum(rng.normal(0.0, 0.15, n))
    turns = rng.random(n) < 0.004
    heading += np.cumsum(np.where(turns, rng.choice([-np.pi / 2, np.pi / 2], n), 0.0))
    step = np.where(moving, rng.normal(1.4, 0.2, n) * dt, 0.0)
    east = np.cumsum(step * np.cos(heading))
    north = np.cumsum(step * np.sin(heading))
    # GPS noise: independent per fix while moving, frozen while paused.
    noise = rng.normal(0.0, jitter_m, (2, n))
    held = np.maximum.accumulate(np.where(moving, np.arange(n), 0))
    noise = noise[:, held]
    east = east + noise[0]
    north = north + noise[1]
    # Rare spikes: one fix 300 m to 1 km off, the next back on track.
    spikes = rng.random(n) < 1.0 / spike_every
    east += np.where(spikes, rng.uniform(300, 1_000, n) * rng.choice([-1, 1], n), 0.0)
    lat0 = start[1]
    lat = lat0 + north / _METRES_PER_DEGREE
    lon = start[0] + east / (_METRES_PER_DEGREE * np.cos(np.radians(lat0)))
    lon, lat = np.round(lon, 7), np.round(lat, 7)
    # Paused fixes repeat the previous position exactly.
    lon, lat = lon[held], lat[held]
    epoch = _T0 + seed * 86_400 + np.cumsum(dt)
    # Exact duplicates (same time and place) of the previous fix, about 1 in 1,000.
    dup = np.flatnonzero(rng.random(n) < 0.001)
    dup = dup[dup > 0]
    lon[dup], lat[dup], epoch[dup] = lon[dup - 1], lat[dup - 1], epoch[dup - 1]
    ele = np.round(1_700 + np.cumsum(rng.normal(0.0, 0.05, n)) + rng.normal(0.0, 2.0, n), 1)
    hdop = np.round(rng.uniform(2.0, 8.0, n), 1)
    hdop[rng.random(n) < 1.0 / bad_hdop_every] = 25.0
    return Walk(lon=lon, lat=lat, ele=ele, epoch=epoch, hdop=hdop)


def gpx_bytes(walk: Walk, *, segment_points: int = 250_000) -> bytes:
    """The walk as a GPX 1.1 document: one track, a new segment every ``segment_points``."""
    stamps = np.datetime_as_string(walk.epoch.astype("datetime64[s]"), unit="s")
    parts = [
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<gpx version="1.1" creator="makazi phone_walk" '
        b'xmlns="http://www.topografix.com/GPX/1/1"><trk><name>walk</name><trkseg>\n'
    ]
    template = (
        '<trkpt lat="%.7f" lon="%.7f"><ele>%.1f</ele><time>%sZ</time><hdop>%.1f</hdop></trkpt>\n'
    )
    for i in range(len(walk.lon)):
        if i and i % segment_points == 0:
            parts.append(b"</trkseg><trkseg>\n")
        parts.append(
            (template % (walk.lat[i], walk.lon[i], walk.ele[i], stamps[i], walk.hdop[i])).encode()
        )
    parts.append(b"</trkseg></trk></gpx>\n")
    return b"".join(parts)
