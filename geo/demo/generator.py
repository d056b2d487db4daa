"""Synthetic settlements for demos, tests and benchmarks.

Nothing here is real people's data: boundaries, footprints, names and phone
numbers are drawn from a seeded random generator.  The shapes imitate what
enumeration teams map in Nairobi: irregular settlement outlines (one pair
overlapping, as contested claims do), rows of small back-to-back structures
(mostly 8-30 m²) along narrow lanes, painted numbers like ``KB-04-0117``,
households with members, tenure and rent, shared water points and toilets,
a main road and a river.

:func:`generate` is pure (same seed, same output); :func:`load` writes the
result with ``COPY``, fast enough for a million structures.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import shapely
from numpy.typing import NDArray
from pyproj import Geod, Transformer
from shapely.geometry import LineString, MultiPolygon, Point, Polygon

from geo.core.crs import METRIC_SRID
from geo.layers.registry import ENUMS

__all__ = [
    "CELL_AREA_M2",
    "CELL_WIDTH_M",
    "CELLS_PER_BLOCK",
    "LANE_WIDTH_M",
    "ROW_DEPTH_M",
    "ROW_PAIR_M",
    "WALK_SPEED_MPS",
    "WALK_START",
    "DemoData",
    "DemoSettlement",
    "generate",
]

ROW_DEPTH_M = 5.0
LANE_WIDTH_M = 3.0
CELL_WIDTH_M = 5.5
ROW_PAIR_M = 2 * ROW_DEPTH_M + LANE_WIDTH_M
CELL_AREA_M2 = CELL_WIDTH_M * ROW_PAIR_M / 2
CELLS_PER_BLOCK = 8

# name, code, alternative names, ward, centre (lon, lat), share of structures, status
_PLACES: tuple[tuple[str, str, tuple[str, ...], str, tuple[float, float], float, str], ...] = (
    ("Kibera (demo)", "KB", ("Kibra",), "Laini Saba", (36.7870, -1.3130), 0.34, "recognised"),
    ("Mathare (demo)", "MT", ("Mathare Valley",), "Mabatini", (36.8580, -1.2600), 0.2, "surveyed"),
    (
        "Mukuru kwa Njenga (demo)",
        "MN",
        ("Mukuru",),
        "Imara Daima",
        (36.8890, -1.3110),
        0.2,
        "contested",
    ),
    ("Mukuru kwa Reuben (demo)", "MR", (), "Kwa Reuben", (36.8890, -1.3110), 0.1, "contested"),
    ("Kangemi (demo)", "KG", (), "Kangemi", (36.7450, -1.2650), 0.16, "proposed"),
)
_USES = ENUMS["use"]
_USE_P = (0.72, 0.1, 0.1, 0.015, 0.01, 0.005, 0.03, 0.01, 0.01)
_WALLS = ("iron_sheet", "mud", "timber", "stone", "brick", "concrete")
_WALL_P = (0.45, 0.3, 0.08, 0.07, 0.05, 0.05)
_ROOFS = ("iron_sheet", "tin", "tile", "concrete", "thatch")
_ROOF_P = (0.8, 0.1, 0.03, 0.04, 0.03)
_TENURES = ("tenant", "structure_owner", "owner", "other")
_TENURE_P = (0.78, 0.12, 0.05, 0.05)
_FIRST = (
    "Achieng",
    "Wanjiru",
    "Otieno",
    "Mwangi",
    "Akinyi",
    "Kamau",
    "Njeri",
    "Omondi",
    "Atieno",
    "Kiprop",
    "Wambui",
    "Mutua",
    "Auma",
    "Kariuki",
    "Nyambura",
    "Ouma",
    "Chebet",
    "Wafula",
    "Moraa",
    "Juma",
    "Halima",
    "Baraka",
    "Zawadi",
    "Amina",
)
_LAST = (
    "Odhiambo",
    "Kimani",
    "Onyango",
    "Njoroge",
    "Wekesa",
    "Mutiso",
    "Ochieng",
    "Kiplagat",
    "Nduta",
    "Barasa",
    "Hassan",
    "Maina",
    "Okoth",
    "Wairimu",
    "Nyongesa",
    "Abdi",
)


@dataclass
class DemoSettlement:
    """One generated settlement and what stands in it (arrays are aligned)."""

    name: str
    code: str
    alt_names: tuple[str, ...]
    ward: str
    status: str
    boundary: MultiPolygon
    footprints: NDArray[np.object_] = field(repr=False)
    numbers: list[str] = field(repr=False)
    uses: NDArray[np.str_] = field(repr=False)
    walls: NDArray[np.str_] = field(repr=False)
    roofs: NDArray[np.str_] = field(repr=False)
    storeys: NDArray[np.int64] = field(repr=False)


@dataclass
class DemoData:
    """Everything :func:`generate` makes, in EPSG:4326."""

    seed: int
    settlements: list[DemoSettlement]
    # households: index into the concatenated structures of all settlements
    household_structure: NDArray[np.int64]
    household_members: NDArray[np.int64]
    household_tenure: NDArray[np.str_]
    household_rent: NDArray[np.float64]
    household_years: NDArray[np.int64]
    household_names: list[str]
    household_phones: list[str]
    # facilities: (settlement index, type, condition, name, geometry)
    facilities: list[tuple[int, str, str | None, str, shapely.Geometry]]
    # public GPS walks: (settlement index, name, GPX bytes)
    walks: list[tuple[int, str, bytes]] = field(default_factory=list)

    @property
    def structure_count(self) -> int:
        """Number of structures over all settlements."""
        return sum(len(s.footprints) for s in self.settlements)


def _outline(rng: np.random.Generator, radius: float, vertices: int = 72) -> Polygon:
    """An irregular, star-shaped (so always simple) outline around the origin."""
    theta = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 7):
        r += rng.uniform(0.03, 0.09) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r *= radius
    return Polygon(np.column_stack([r * np.cos(theta), r * np.sin(theta)]))


def _rotate(
    x: NDArray[np.float64], y: NDArray[np.float64], angle: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    c, s = math.cos(angle), math.sin(angle)
    return x * c - y * s, x * s + y * c


def _cells(
    rng: np.random.Generator, outline: Polygon, angle: float, exclude: Polygon | None
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]]:
    """Centres of building plots (local metres) in rows along lanes inside ``outline``."""
    minx, miny, maxx, maxy = outline.bounds
    reach = max(abs(minx), abs(miny), abs(maxx), abs(maxy)) * 1.5
    n_cols = int(2 * reach / CELL_WIDTH_M) + 1
    n_pairs = int(2 * reach / ROW_PAIR_M) + 1
    grid = np.meshgrid(np.arange(n_cols), np.arange(n_pairs), np.arange(2), indexing="ij")
    col, pair, side = (axis.ravel() for axis in grid)
    keep = (col % (CELLS_PER_BLOCK + 1)) != CELLS_PER_BLOCK  # a cross alley every 8 plots
    col, pair, side = col[keep], pair[keep], side[keep]
    u = -reach + (col + 0.5) * CELL_WIDTH_M
    v = -reach + pair * ROW_PAIR_M + LANE_WIDTH_M + (side + 0.5) * ROW_DEPTH_M
    x, y = _rotate(u, v, angle)
    inner = outline.buffer(-4.0)
    inside = shapely.contains_xy(inner, x, y)
    if exclude is not None:
        inside &= ~shapely.contains_xy(exclude.buffer(4.0), x, y)
    block = (col // (CELLS_PER_BLOCK + 1)) // 3 * 1000 + pair // 4
    order = np.argsort(block[inside] * 10_000_000 + col[inside] * 10 + side[inside], kind="stable")
    return x[inside][order], y[inside][order], block[inside][order], col[inside][order]


def _enough_cells(
    rng: np.random.Generator,
    outline: Polygon,
    angle: float,
    exclude: Polygon | None,
    wanted: int,
    origin: NDArray[np.float64],
) -> tuple[Polygon, NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    """The outline, grown by 12% at a time about ``origin`` until it holds ``wanted`` plots,
    and its plots' centres and blocks."""
    while True:
        x, y, block, _col = _cells(rng, outline, angle, exclude)
        if len(x) >= wanted:
            return outline, x, y, block
        outline = shapely.affinity.scale(outline, 1.12, 1.12, origin=(origin[0], origin[1]))


def _footprints(
    rng: np.random.Generator, x: NDArray[np.float64], y: NDArray[np.float64], angle: float
) -> NDArray[np.float64]:
    """Rectangles (n, 5, 2) around plot centres, slightly varied in size and turn."""
    n = len(x)
    half_w = rng.uniform(2.8, 5.0, n) / 2
    half_d = rng.uniform(3.0, 4.8, n) / 2
    turn = angle + np.radians(rng.uniform(-2.0, 2.0, n))
    corners_u = np.stack([-half_w, half_w, half_w, -half_w, -half_w], axis=1)
    corners_v = np.stack([-half_d, -half_d, half_d, half_d, -half_d], axis=1)
    c, s = np.cos(turn)[:, None], np.sin(turn)[:, None]
    px = x[:, None] + corners_u * c - corners_v * s
    py = y[:, None] + corners_u * s + corners_v * c
    return np.stack([px, py], axis=2)


def _to_wgs84(
    to_utm: Transformer,
    to_wgs: Transformer,
    centre: tuple[float, float],
    coords: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Local metres around ``centre`` (lon, lat) to lon/lat, any leading shape."""
    cx, cy = to_utm.transform(*centre)
    flat = coords.reshape(-1, 2)
    lon, lat = to_wgs.transform(flat[:, 0] + cx, flat[:, 1] + cy)
    return np.column_stack([lon, lat]).reshape(coords.shape)


def generate(structures: int, seed: int = 7) -> DemoData:
    """Generate the demo settlements with about ``structures`` structures in all.

    Parameters
    ----------
    structures
        Total number of structure footprints (exact).
    seed
        Seed of the random generator: the same seed gives the same data.

    Returns
    -------
    DemoData
        Settlements with their structures, households and facilities.
    """
    if structures < 0:
        raise ValueError("structures must be >= 0")
    rng = np.random.default_rng(seed)
    to_utm = Transformer.from_crs(4326, METRIC_SRID, always_xy=True)
    to_wgs = Transformer.from_crs(METRIC_SRID, 4326, always_xy=True)
    shares = np.array([place[5] for place in _PLACES])
    counts = np.floor(shares / shares.sum() * structures).astype(np.int64)
    counts[0] += structures - counts.sum()

    settlements: list[DemoSettlement] = []
    facilities: list[tuple[int, str, str | None, str, shapely.Geometry]] = []
    local_outlines: list[Polygon] = []
    pair_offset = np.zeros(2)
    for index, (name, code, alt, ward, centre, _share, status) in enumerate(_PLACES):
        wanted = int(counts[index])
        radius = max(80.0, math.sqrt(wanted * CELL_AREA_M2 * 1.35 / math.pi))
        angle = float(rng.uniform(-0.6, 0.6))
        exclude = None
        offset = np.zeros(2)
        if code == "MR":
            # Mukuru kwa Reuben's claim overlaps Mukuru kwa Njenga's eastern edge.
            exclude = local_outlines[index - 1]
            offset = pair_offset
        outline = _outline(rng, radius)
        if code == "MR":
            outline = shapely.affinity.translate(outline, *offset)
        outline, x, y, block = _enough_cells(rng, outline, angle, exclude, wanted, offset)
        chosen = (
            np.sort(rng.choice(len(x), size=wanted, replace=False))
            if wanted
            else np.array([], dtype=np.int64)
        )
        x, y, block = x[chosen], y[chosen], block[chosen]
        rects = _footprints(rng, x, y, angle)
        rects_wgs = _to_wgs84(to_utm, to_wgs, centre, rects)
        footprints = shapely.polygons(rects_wgs) if wanted else np.array([], dtype=object)
        _, zone = np.unique(block, return_inverse=True)
        numbers = _numbers(code, zone)
        boundary_wgs = shapely.polygons(
            _to_wgs84(to_utm, to_wgs, centre, np.asarray(outline.exterior.coords))
        )
        boundary = MultiPolygon([shapely.make_valid(boundary_wgs)])
        settlements.append(
            DemoSettlement(
                name=name,
                code=code,
                alt_names=alt,
                ward=ward,
                status=status,
                boundary=boundary,
                footprints=footprints,
                numbers=numbers,
                uses=rng.choice(_USES, size=wanted, p=_USE_P),
                walls=rng.choice(_WALLS, size=wanted, p=_WALL_P),
                roofs=rng.choice(_ROOFS, size=wanted, p=_ROOF_P),
                storeys=rng.choice([1, 2, 3], size=wanted, p=[0.85, 0.12, 0.03]),
            )
        )
        local_outlines.append(outline)
        if code == "MN":
            bounds = outline.bounds
            pair_offset = np.array([bounds[2] * 1.45, bounds[3] * 0.1])
        facilities.extend(
            _facilities(rng, index, name, outline, angle, wanted, to_utm, to_wgs, centre)
        )
    households = _households(rng, settlements)
    walks = _walks(rng, settlements, facilities)
    return DemoData(
        seed=seed, settlements=settlements, facilities=facilities, walks=walks, **households
    )


def _numbers(code: str, zone: NDArray[np.int64]) -> list[str]:
    """Painted numbers ``CODE-ZZ-NNNN``: zone, then the plot's sequence within it."""
    seq = np.zeros(len(zone), dtype=np.int64)
    if len(zone):
        starts = np.r_[0, np.flatnonzero(np.diff(zone)) + 1]
        run = np.diff(np.r_[starts, len(zone)])
        seq = np.arange(len(zone)) - np.repeat(starts, run) + 1
        order = np.argsort(zone, kind="stable")
        if not np.array_equal(order, np.arange(len(zone))):
            # zones not contiguous: count within each zone in order of appearance
            counts: dict[int, int] = {}
            for i, z in enumerate(zone.tolist()):
                counts[z] = counts.get(z, 0) + 1
                seq[i] = counts[z]
    return [f"{code}-{z + 1:02d}-{s:04d}" for z, s in zip(zone.tolist(), seq.tolist(), strict=True)]


def _facilities(
    rng: np.random.Generator,
    index: int,
    name: str,
    outline: Polygon,
    angle: float,
    structures: int,
    to_utm: Transformer,
    to_wgs: Transformer,
    centre: tuple[float, float],
) -> Iterator[tuple[int, str, str | None, str, shapely.Geometry]]:
    """Water points, toilet blocks, schools and clinics in the lanes; a road and a river."""
    short = name.replace(" (demo)", "")
    inner = outline.buffer(-6.0)
    if inner.is_empty:
        inner = outline
    minx, miny, maxx, maxy = inner.bounds
    plan = (
        ("water_point", max(2, structures // 120), "Water point"),
        ("toilet_block", max(2, structures // 80), "Toilet block"),
        ("school", max(1, structures // 2500), "School"),
        ("clinic", max(1, structures // 5000), "Clinic"),
    )
    for kind, count, label in plan:
        found: list[tuple[float, float]] = []
        while len(found) < count:
            u = rng.uniform(minx, maxx, count * 2)
            lane = (rng.integers(-1000, 1000, count * 2) * ROW_PAIR_M + LANE_WIDTH_M / 2).astype(
                np.float64
            )
            px, py = _rotate(u, lane, angle)
            ok = shapely.contains_xy(inner, px, py)
            found.extend(zip(px[ok].tolist(), py[ok].tolist(), strict=True))
        for n, (x, y) in enumerate(found[:count], start=1):
            lon, lat = _to_wgs84(to_utm, to_wgs, centre, np.array([x, y]))
            condition = str(rng.choice(["working", "needs_repair", "broken"], p=[0.7, 0.2, 0.1]))
            yield index, kind, condition, f"{short} {label} {n}", Point(lon, lat)
    span = np.linspace(minx * 1.3, maxx * 1.3, 60)
    road_x, road_y = _rotate(span, np.full_like(span, LANE_WIDTH_M / 2), angle)
    road = LineString(_to_wgs84(to_utm, to_wgs, centre, np.column_stack([road_x, road_y])))
    yield index, "road", "needs_repair", f"{short} main road", road
    wiggle = (maxy - miny) * 0.3 + 12 * np.sin(span / 40.0) + rng.uniform(-2, 2, len(span))
    river = LineString(_to_wgs84(to_utm, to_wgs, centre, np.column_stack([span, wiggle])))
    yield index, "drainage", None, f"{short} river", river


def _households(rng: np.random.Generator, settlements: list[DemoSettlement]) -> dict[str, Any]:
    """Households for most residential and mixed structures (some not yet enumerated)."""
    uses = np.concatenate([s.uses for s in settlements]) if settlements else np.array([])
    total = len(uses)
    per = np.zeros(total, dtype=np.int64)
    residential = uses == "residential"
    mixed = uses == "mixed"
    per[residential] = rng.choice(
        [1, 2, 3, 4], size=int(residential.sum()), p=[0.55, 0.25, 0.12, 0.08]
    )
    per[mixed] = rng.choice([1, 2], size=int(mixed.sum()), p=[0.8, 0.2])
    enumerated = rng.random(total) < 0.85
    per[~enumerated] = 0
    structure = np.repeat(np.arange(total), per)
    n = len(structure)
    tenure = rng.choice(_TENURES, size=n, p=_TENURE_P)
    rent = np.where(tenure == "tenant", np.round(rng.uniform(700, 4500, n) / 50) * 50, np.nan)
    first = rng.integers(0, len(_FIRST), n)
    last = rng.integers(0, len(_LAST), n)
    phones = rng.integers(10_000_000, 99_999_999, n)
    return {
        "household_structure": structure,
        "household_members": rng.choice(
            np.arange(1, 9), size=n, p=[0.14, 0.16, 0.19, 0.18, 0.14, 0.1, 0.05, 0.04]
        ),
        "household_tenure": tenure,
        "household_rent": rent,
        "household_years": rng.integers(0, 31, n),
        "household_names": [f"{_FIRST[a]} {_LAST[b]}" for a, b in zip(first, last, strict=True)],
        "household_phones": [f"07{p:08d}" for p in phones.tolist()],
    }


WALK_SPEED_MPS = 1.3
WALK_START = datetime(2026, 1, 15, 7, 0, tzinfo=UTC)


def _gpx(name: str, line: LineString, rng: np.random.Generator) -> bytes:
    """A phone-like GPX 1.1 track along ``line``: a fix every ~5 m, walking pace, 2 m jitter."""
    geod = Geod(ellps="WGS84")
    dense = shapely.segmentize(line, 0.00005)
    coords = np.asarray(dense.coords)
    jitter = rng.normal(0.0, 0.000015, coords.shape)
    coords = coords + jitter
    steps = geod.inv(coords[:-1, 0], coords[:-1, 1], coords[1:, 0], coords[1:, 1])[2]
    seconds = np.concatenate([[0.0], np.cumsum(np.asarray(steps) / WALK_SPEED_MPS)])
    points = "".join(
        f'<trkpt lat="{lat:.7f}" lon="{lon:.7f}"><ele>{1700 + 5 * math.sin(i / 40):.1f}</ele>'
        f"<time>{(WALK_START + timedelta(seconds=float(t))).strftime('%Y-%m-%dT%H:%M:%SZ')}"
        "</time></trkpt>"
        for i, ((lon, lat), t) in enumerate(zip(coords.tolist(), seconds.tolist(), strict=True))
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<gpx version="1.1" creator="makazi demo" xmlns="http://www.topografix.com/GPX/1/1">'
        f"<trk><name>{name}</name><trkseg>{points}</trkseg></trk></gpx>\n"
    ).encode()


def _walks(
    rng: np.random.Generator,
    settlements: list[DemoSettlement],
    facilities: list[tuple[int, str, str | None, str, shapely.Geometry]],
) -> list[tuple[int, str, bytes]]:
    """A walk down each settlement's main road, and one walk round the first boundary."""
    walks = []
    for index, kind, _condition, name, geom in facilities:
        if kind == "road" and isinstance(geom, LineString):
            walks.append((index, f"{name} walk", _gpx(f"{name} walk", geom, rng)))
    if settlements:
        ring = LineString(settlements[0].boundary.geoms[0].exterior.coords)
        title = f"{settlements[0].name.replace(' (demo)', '')} perimeter walk"
        walks.append((0, title, _gpx(title, ring, rng)))
    return walks
