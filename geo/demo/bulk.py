"""Demo data at benchmark scale: ten million structures in minutes, in flat memory.

:func:`geo.demo.generator.generate` builds everything in memory as shapely
objects (fine for tests and demos, several GB at 10M); this module streams the
same kind of data settlement by settlement straight into ``COPY``:

* more settlements as the count grows (about :data:`STRUCTURES_PER_SETTLEMENT`
  each, 5 to :data:`MAX_SETTLEMENTS`): the five named places, then numbered
  neighbours on a grid south of them, so one settlement's arrays bound memory;
* footprints, painted numbers, households, names and phone numbers are numpy
  arrays; the COPY text (geometry as hex EWKB) is assembled with numpy string
  ufuncs, so no Python object exists per structure or household;
* the per-row household-count trigger is replaced by the counts the generator
  already knows (written in the structures' ``households`` column).

Plots, footprints and facilities come from the generator's own helpers, so the
settlements look the same; the random streams differ, so the data is not
``generate()``'s for the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from numpy.typing import NDArray
from pyproj import Transformer
from shapely.geometry import MultiPolygon, Polygon
from sqlalchemy import Connection, text

from geo.core.crs import METRIC_SRID
from geo.demo.generator import (
    _FIRST,
    _LAST,
    _PLACES,
    _ROOF_P,
    _ROOFS,
    _TENURE_P,
    _TENURES,
    _USE_P,
    _USES,
    _WALL_P,
    _WALLS,
    CELL_AREA_M2,
    _enough_cells,
    _facilities,
    _footprints,
    _outline,
    _to_wgs84,
)
from geo.demo.loader import _reserve_structure_ids

__all__ = [
    "MAX_SETTLEMENTS",
    "STRUCTURES_PER_SETTLEMENT",
    "Place",
    "SettlementBatch",
    "batches",
    "load_bulk",
    "places",
]

STRUCTURES_PER_SETTLEMENT = 200_000
MAX_SETTLEMENTS = 50
GRID_STEP_DEG = 0.06  # neighbours' centres 6.7 km apart: room for 400,000 structures each
_HEX = np.array([f"{i:02X}".encode() for i in range(256)], dtype="S2")
# EWKB of a polygon with an SRID: byte order, type (3 | SRID flag), SRID, rings, points, x/y
_EWKB = np.dtype(
    [
        ("order", "u1"),
        ("kind", "<u4"),
        ("srid", "<u4"),
        ("rings", "<u4"),
        ("points", "<u4"),
        ("xy", "<f8", (10,)),
    ]
)


@dataclass(frozen=True)
class Place:
    """Where a settlement is and what it is called."""

    name: str
    code: str
    alt_names: tuple[str, ...]
    ward: str
    centre: tuple[float, float]
    share: float
    status: str


def places(structures: int) -> list[Place]:
    """The settlements for ``structures`` structures: the five named ones, then neighbours."""
    count = min(MAX_SETTLEMENTS, max(len(_PLACES), round(structures / STRUCTURES_PER_SETTLEMENT)))
    named = [Place(*place) for place in _PLACES]
    scale = len(_PLACES) / count  # the named five keep their relative sizes
    found = [
        Place(p.name, p.code, p.alt_names, p.ward, p.centre, p.share * scale, p.status)
        for p in named
    ]
    for k in range(count - len(_PLACES)):
        row, col = divmod(k, 9)
        base = named[k % len(named)]
        centre = (36.70 + col * GRID_STEP_DEG, -1.40 - row * GRID_STEP_DEG)
        code = chr(ord("A") + k // 26) + chr(ord("A") + k % 26)
        short = base.name.replace(" (demo)", "")
        found.append(
            Place(f"{short} {k + 2} (demo)", code, (), base.ward, centre, 1 / count, "surveyed")
        )
    return found


@dataclass
class SettlementBatch:
    """One settlement's structures as arrays (rows aligned), ready for ``COPY``."""

    place: Place
    boundary: MultiPolygon
    rings: NDArray[np.float64]  # (n, 5, 2) lon/lat
    numbers: NDArray[np.bytes_]
    uses: NDArray[np.bytes_]
    walls: NDArray[np.bytes_]
    roofs: NDArray[np.bytes_]
    storeys: NDArray[np.int64]
    households: NDArray[np.int64]  # households per structure
    facilities: list[tuple[int, str, str | None, str, shapely.Geometry]]


def _counts(structures: int, found: list[Place]) -> NDArray[np.int64]:
    shares = np.array([p.share for p in found])
    counts: NDArray[np.int64] = np.floor(shares / shares.sum() * structures).astype(np.int64)
    counts[0] += structures - counts.sum()
    return counts


def _painted(code: str, zone: NDArray[np.int64]) -> NDArray[np.bytes_]:
    """Painted numbers ``CODE-ZZ-NNNN`` (zone, then sequence within the zone), vectorised."""
    order = np.argsort(zone, kind="stable")
    ordered = zone[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ordered)) + 1] if len(zone) else np.array([0])
    run = np.diff(np.r_[starts, len(zone)])
    seq = np.empty(len(zone), dtype=np.int64)
    seq[order] = np.arange(len(zone)) - np.repeat(starts, run) + 1
    zz = np.strings.zfill((zone + 1).astype("S8"), 2)
    nnnn = np.strings.zfill(seq.astype("S8"), 4)
    return _join(np.bytes_(f"{code}-"), zz, np.bytes_(b"-"), nnnn)


def _join(*parts: Any) -> NDArray[np.bytes_]:
    """Byte strings concatenated element-wise."""
    out = parts[0]
    for part in parts[1:]:
        out = np.strings.add(out, part)
    return np.asarray(out)


def _text(values: NDArray[Any]) -> NDArray[np.bytes_]:
    """Integers as byte strings."""
    return values.astype("S20")


def ewkb_hex(rings: NDArray[np.float64], srid: int = 4326) -> NDArray[np.bytes_]:
    """Hex EWKB of closed 5-point rings ``(n, 5, 2)`` as polygons, without shapely objects."""
    n = len(rings)
    raw = np.empty(n, dtype=_EWKB)
    raw["order"], raw["kind"], raw["srid"] = 1, 3 | 0x20000000, srid
    raw["rings"], raw["points"] = 1, 5
    raw["xy"] = rings.reshape(n, 10)
    digits = _HEX[raw.view(np.uint8).reshape(n, _EWKB.itemsize)]
    return np.ascontiguousarray(digits).view(f"S{2 * _EWKB.itemsize}").ravel()


def _lines(*columns: Any) -> bytes:
    """Tab-separated COPY text of aligned byte-string columns (values need no escaping)."""
    row = columns[0]
    for column in columns[1:]:
        row = np.strings.add(np.strings.add(row, b"\t"), column)
    row = np.strings.add(row, b"\n")
    return b"".join(np.asarray(row).tolist())


def batches(structures: int, seed: int = 7) -> Iterator[SettlementBatch]:
    """Each settlement's structures, one settlement at a time (same seed, same data)."""
    if structures < 0:
        raise ValueError("structures must be >= 0")
    rng = np.random.default_rng(seed)
    to_utm = Transformer.from_crs(4326, METRIC_SRID, always_xy=True)
    to_wgs = Transformer.from_crs(METRIC_SRID, 4326, always_xy=True)
    found = places(structures)
    counts = _counts(structures, found)
    previous: Polygon | None = None
    pair_offset = np.zeros(2)
    for index, place in enumerate(found):
        wanted = int(counts[index])
        radius = max(80.0, math.sqrt(wanted * CELL_AREA_M2 * 1.35 / math.pi))
        angle = float(rng.uniform(-0.6, 0.6))
        exclude, offset = None, np.zeros(2)
        outline = _outline(rng, radius)
        if place.code == "MR":  # its claim overlaps Mukuru kwa Njenga's eastern edge
            exclude, offset = previous, pair_offset
            outline = shapely.affinity.translate(outline, *offset)
        outline, x, y, block = _enough_cells(rng, outline, angle, exclude, wanted, offset)
        chosen = np.sort(rng.choice(len(x), size=wanted, replace=False))
        x, y, block = x[chosen], y[chosen], block[chosen]
        rings = _to_wgs84(to_utm, to_wgs, place.centre, _footprints(rng, x, y, angle))
        _, zone = np.unique(block, return_inverse=True)
        boundary_ring = _to_wgs84(to_utm, to_wgs, place.centre, np.asarray(outline.exterior.coords))
        boundary = MultiPolygon([shapely.make_valid(shapely.polygons(boundary_ring))])
        uses = rng.choice(np.array(_USES, dtype="S"), size=wanted, p=_USE_P)
        per = np.zeros(wanted, dtype=np.int64)
        residential, mixed = uses == b"residential", uses == b"mixed"
        per[residential] = rng.choice(
            [1, 2, 3, 4], size=int(residential.sum()), p=[0.55, 0.25, 0.12, 0.08]
        )
        per[mixed] = rng.choice([1, 2], size=int(mixed.sum()), p=[0.8, 0.2])
        per[rng.random(wanted) >= 0.85] = 0  # not yet enumerated
        facilities = list(
            _facilities(
                rng, index, place.name, outline, angle, wanted, to_utm, to_wgs, place.centre
            )
        )
        yield SettlementBatch(
            place=place,
            boundary=boundary,
            rings=rings,
            numbers=_painted(place.code, zone.astype(np.int64)),
            uses=uses,
            walls=rng.choice(np.array(_WALLS, dtype="S"), size=wanted, p=_WALL_P),
            roofs=rng.choice(np.array(_ROOFS, dtype="S"), size=wanted, p=_ROOF_P),
            storeys=rng.choice([1, 2, 3], size=wanted, p=[0.85, 0.12, 0.03]),
            households=per,
            facilities=facilities,
        )
        if place.code == "MN":
            bounds = outline.bounds
            pair_offset = np.array([bounds[2] * 1.45, bounds[3] * 0.1])
        previous = outline


def _household_lines(
    rng: np.random.Generator, first_id: int, per: NDArray[np.int64]
) -> tuple[bytes, int]:
    """COPY text of the households of structures ``first_id, first_id + 1, ...``."""
    structure = np.repeat(np.arange(first_id, first_id + len(per)), per)
    n = len(structure)
    names = np.array([f"{a} {b}".encode() for a in _FIRST for b in _LAST], dtype="S")
    tenure = rng.choice(np.array(_TENURES, dtype="S"), size=n, p=_TENURE_P)
    rent = (np.round(rng.uniform(700, 4500, n) / 50) * 50).astype(np.int64)
    rent_text = np.where(tenure == b"tenant", _text(rent), np.bytes_(b"\\N"))
    phones = rng.integers(10_000_000, 99_999_999, n)
    members = rng.choice(np.arange(1, 9), size=n, p=[0.14, 0.16, 0.19, 0.18, 0.14, 0.1, 0.05, 0.04])
    lines = _lines(
        _text(structure),
        names[rng.integers(0, len(names), n)],
        np.strings.add(b"07", _text(phones)),
        _text(members),
        tenure,
        rent_text,
        _text(rng.integers(0, 31, n)),
    )
    return lines, n


def _copy(conn: Connection, statement: str, data: bytes) -> None:
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur, cur.copy(statement) as copy:
        view = memoryview(data)
        for start in range(0, len(data), 8 << 20):
            copy.write(view[start : start + (8 << 20)])


_BULK_TABLES = ["structures", "households", "facilities"]


def _drop_indexes(conn: Connection) -> list[str]:
    """Drop the bulk tables' indexes that back no constraint; return their definitions.

    Building an index once over the loaded rows is several times faster than
    growing it row by row (the GiST index above all).
    """
    rows = conn.execute(
        text(
            "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "WHERE i.indrelid = ANY(CAST(:tables AS regclass[])) AND NOT EXISTS "
            "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)"
        ),
        {"tables": _BULK_TABLES},
    ).all()
    for name, _definition in rows:
        conn.execute(text(f"DROP INDEX {name}"))  # a name from the catalog
    return [str(definition) for _name, definition in rows]


def load_bulk(
    conn: Connection, structures: int, seed: int = 7, *, progress: bool = False
) -> dict[str, int]:
    """Generate and write ``structures`` demo structures inside the caller's transaction.

    History is off for this transaction (as :func:`geo.demo.loader.load` with
    ``audited=False``); the household-count trigger is switched off while the
    households are copied and switched on again (the counts are written with
    the structures).  Into empty tables, the indexes are dropped first and built
    once at the end (in the same transaction).  Memory stays at one settlement's arrays.

    Returns
    -------
    dict
        Counts written: settlements, structures, households, facilities.
    """
    conn.execute(text("SELECT set_config('makazi.audit', 'off', true)"))
    conn.execute(text("SELECT set_config('makazi.user', 'makazi-demo', true)"))
    rng = np.random.default_rng(seed + 1)
    next_id = _reserve_structure_ids(conn, structures)
    totals = {"settlements": 0, "structures": 0, "households": 0, "facilities": 0}
    conn.execute(text("ALTER TABLE households DISABLE TRIGGER households_count_insert"))
    empty = not conn.execute(text("SELECT EXISTS (SELECT 1 FROM structures)")).scalar()
    indexes = _drop_indexes(conn) if empty else []
    for batch in batches(structures, seed):
        settlement_id = conn.execute(
            text(
                "INSERT INTO settlements (name, alt_names, county, ward, status, source, "
                "notes, geom) VALUES (:name, :alt, 'Nairobi', :ward, :status, "
                "'makazi demo generator', :notes, ST_GeomFromText(:wkt, 4326)) RETURNING id"
            ),
            {
                "name": batch.place.name,
                "alt": list(batch.place.alt_names),
                "ward": batch.place.ward,
                "status": batch.place.status,
                "wkt": batch.boundary.wkt,
                "notes": f"Synthetic data (seed {seed}); not a real survey.",
            },
        ).scalar_one()
        n = len(batch.rings)
        ids = np.arange(next_id, next_id + n)
        _copy(
            conn,
            "COPY structures (id, settlement_id, structure_number, use, wall_material, "
            "roof_material, storeys, households, geom) FROM STDIN",
            _lines(
                _text(ids),
                np.bytes_(str(settlement_id).encode()),
                batch.numbers,
                batch.uses,
                batch.walls,
                batch.roofs,
                _text(batch.storeys),
                _text(batch.households),
                ewkb_hex(batch.rings),
            ),
        )
        lines, households = _household_lines(rng, next_id, batch.households)
        _copy(
            conn,
            "COPY households (structure_id, head_name, phone, members, tenure, rent_kes, "
            "years_in_settlement) FROM STDIN",
            lines,
        )
        geoms = shapely.set_srid(np.array([f[4] for f in batch.facilities], dtype=object), 4326)
        wkb = shapely.to_wkb(geoms, hex=True, include_srid=True)
        facility_lines = "".join(
            f"{kind}\t{condition or chr(92) + 'N'}\t{name}\t{settlement_id}\t{geom_hex}\n"
            for (_index, kind, condition, name, _geom), geom_hex in zip(
                batch.facilities, wkb, strict=True
            )
        )
        _copy(
            conn,
            "COPY facilities (type, condition, name, settlement_id, geom) FROM STDIN",
            facility_lines.encode(),
        )
        next_id += n
        totals["settlements"] += 1
        totals["structures"] += n
        totals["households"] += households
        totals["facilities"] += len(batch.facilities)
        if progress:
            print(f"  {batch.place.name}: {n:,} structures", flush=True)
    conn.execute(text("ALTER TABLE households ENABLE TRIGGER households_count_insert"))
    conn.execute(text("SELECT set_config('maintenance_work_mem', '512MB', true)"))
    for definition in indexes:
        conn.execute(text(definition))
    conn.execute(text("ANALYZE settlements, structures, households, facilities"))
    return totals
