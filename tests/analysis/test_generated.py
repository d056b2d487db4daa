"""Analyses on generated data whose answers are known by construction.

The fixture lays out, in UTM 37S metres from an origin at (256000, 9855000):

* settlement A = [0,400] x [0,400], B = [400,800] x [0,400] (neighbours) and
  C = [300,500] x [200,400] (a contested claim overlapping both);
* a grid of 4 m x 4 m structures centred at (10 + 20 i, 10 + 20 j) for
  i = 0..39, j = 0..19, all residential;
* one structure straddling A|B at x = 398..406, y = 98..102 (three quarters in B);
* households on every structure with i < 10, members = 1 + (i + j) % 5;
* water points: working at (100,100), broken at (700,300), needs repair at
  (600,100), no condition at (300,350); a toilet block at (500,300).

Expected numbers are computed here from those rules (intervals and shapely
in UTM), never by the SQL under test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import shapely
from fastapi.testclient import TestClient
from shapely.geometry import LineString, Point, box
from sqlalchemy import Connection, text

from geo.analysis.access import access
from geo.analysis.impact import ImpactRequest, impact
from geo.analysis.summary import summary
from geo.core.settings import Settings
from tests.support.db import BoundDatabase

E0, N0 = 256_000.0, 9_855_000.0
COLS, ROWS = 40, 20
SETTLEMENTS = {"A": (0, 0, 400, 400), "B": (400, 0, 800, 400), "C": (300, 200, 500, 400)}
STRADDLER = (398, 98, 406, 102)
FACILITIES = [
    ("water_point", "working", 100, 100),
    ("water_point", "broken", 700, 300),
    ("water_point", "needs_repair", 600, 100),
    ("water_point", None, 300, 350),
    ("toilet_block", "working", 500, 300),
]


def cell_box(i: int, j: int) -> tuple[float, float, float, float]:
    cx, cy = 10 + 20 * i, 10 + 20 * j
    return (cx - 2, cy - 2, cx + 2, cy + 2)


def members(i: int, j: int) -> int:
    return 1 + (i + j) % 5


@dataclass
class Grid:
    ids: dict[str, int]  # settlement name -> id
    structure_ids: dict[tuple[int, int], int]  # (i, j) -> id; straddler at (-1, -1)

    def boxes(self) -> dict[tuple[int, int], tuple[float, float, float, float]]:
        out = {(i, j): cell_box(i, j) for i in range(COLS) for j in range(ROWS)}
        out[(-1, -1)] = STRADDLER
        return out


def _utm(wkt_box: tuple[float, float, float, float]) -> str:
    x0, y0, x1, y1 = wkt_box
    return shapely.box(E0 + x0, N0 + y0, E0 + x1, N0 + y1).wkt


def build_grid(conn: Connection) -> Grid:
    """Insert the fixture inside the test's transaction."""
    ids = {}
    for name, bounds in SETTLEMENTS.items():
        ids[name] = conn.execute(
            text(
                "INSERT INTO settlements (name, status, geom) VALUES (:n, 'contested', "
                "ST_Multi(ST_Transform(ST_GeomFromText(:w, 32737), 4326))) RETURNING id"
            ),
            {"n": f"Grid {name}", "w": _utm(bounds)},
        ).scalar_one()
    structure_ids: dict[tuple[int, int], int] = {}
    cells = [(i, j) for i in range(COLS) for j in range(ROWS)] + [(-1, -1)]
    for i, j in cells:
        bounds = STRADDLER if i < 0 else cell_box(i, j)
        structure_ids[(i, j)] = conn.execute(
            text(
                "INSERT INTO structures (use, geom) VALUES ('residential', "
                "ST_Transform(ST_GeomFromText(:w, 32737), 4326)) RETURNING id"
            ),
            {"w": _utm(bounds)},
        ).scalar_one()
    rows = [
        {"s": structure_ids[(i, j)], "m": members(i, j)} for i in range(10) for j in range(ROWS)
    ]
    conn.execute(
        text("INSERT INTO households (structure_id, members, head_name) VALUES (:s, :m, 'X')"),
        rows,
    )
    for kind, condition, x, y in FACILITIES:
        conn.execute(
            text(
                "INSERT INTO facilities (type, condition, geom) VALUES (:t, :c, "
                "ST_Transform(ST_SetSRID(ST_MakePoint(:x, :y), 32737), 4326))"
            ),
            {"t": kind, "c": condition, "x": E0 + x, "y": N0 + y},
        )
    return Grid(ids=ids, structure_ids=structure_ids)


@pytest.fixture
def grid(connection: Connection) -> Grid:
    return build_grid(connection)


def corridor(y: float, buffer_m: float) -> dict[str, object]:
    """A GeoJSON body for a horizontal line across the grid, given in UTM 37S."""
    return {
        "geometry": {"type": "LineString", "coordinates": [[E0 - 50, N0 + y], [E0 + 850, N0 + y]]},
        "crs": "EPSG:32737",
        "buffer_m": buffer_m,
    }


def home_of(i: int, j: int) -> str:
    """The settlement an affected structure counts in (largest share, ties: smallest area)."""
    x0, y0, x1, _ = cell_box(i, j)
    in_c = x0 >= 300 and x1 <= 500 and y0 >= 200
    if in_c:
        return "C"
    return "A" if x1 <= 400 else "B"


# ---------------------------------------------------------------- impact
def test_impact_counts_exact_set_in_buffer(
    client: TestClient, grid: Grid, token_for: Callable[..., dict[str, str]]
) -> None:
    body = corridor(200, 25)  # covers y 175..225: rows j = 9 and 10
    response = client.post("/analysis/impact", json=body, headers=token_for("planner"))
    assert response.status_code == 200, response.text
    result = response.json()
    affected = [(i, j) for i in range(COLS) for j in (9, 10)]
    assert result["structures"] == len(affected) == 80
    expected_hh = [(i, j) for i, j in affected if i < 10]
    assert result["households"] == len(expected_hh)
    assert result["people"] == sum(members(i, j) for i, j in expected_hh)
    assert result["structures_by_use"] == {"residential": 80}
    by = {entry["name"]: entry["structures"] for entry in result["by_settlement"]}
    expected: dict[str, int] = {}
    for i, j in affected:
        expected[f"Grid {home_of(i, j)}"] = expected.get(f"Grid {home_of(i, j)}", 0) + 1
    assert by == expected
    assert sum(by.values()) == result["structures"]  # each structure counted once
    # facilities: none lies within 25 m of y = 200
    assert result["facilities_by_type"] == {}
    # the buffer area: a 900 m line, 2 x 25 m wide, with round caps
    exact = LineString([(0, 0), (900, 0)]).buffer(25).area
    assert result["buffer_area_m2"] == pytest.approx(exact, rel=0.005)
    assert result["suppressed"] == []


def test_impact_min_overlap_and_facilities(
    db: BoundDatabase, grid: Grid, settings: Settings
) -> None:
    # y 171..229: rows 9, 10 fully inside, rows 8 and 11 a quarter inside.
    body = ImpactRequest(**corridor(200, 29))
    result = impact(db, request=body, settings=settings, role="admin")
    assert result["structures"] == 4 * COLS
    body = body.model_copy(update={"min_overlap": 0.5})
    result = impact(db, request=body, settings=settings, role="admin")
    assert result["structures"] == 2 * COLS
    body = body.model_copy(update={"min_overlap": 0.2})
    assert impact(db, request=body, settings=settings, role="admin")["structures"] == 160
    # a corridor along y = 100 takes the straddler, which counts once, in B
    result = impact(db, request=ImpactRequest(**corridor(100, 1)), settings=settings, role="admin")
    assert result["structures"] == 1
    assert [e["name"] for e in result["by_settlement"]] == ["Grid B"]
    # facilities: y = 100 +- 1 passes the working and needs-repair water points
    assert result["facilities_by_type"] == {"water_point": 2}


def test_impact_polygon_without_buffer(db: BoundDatabase, grid: Grid, settings: Settings) -> None:
    ring = [[E0 + 0, N0 + 0], [E0 + 100, N0 + 0], [E0 + 100, N0 + 100], [E0, N0 + 100]]
    body = ImpactRequest(
        geometry={"type": "Polygon", "coordinates": [[*ring, ring[0]]]}, crs="EPSG:32737"
    )
    result = impact(db, request=body, settings=settings, role="admin")
    assert result["structures"] == 25  # 5 x 5 grid cells
    assert result["buffer_area_m2"] == pytest.approx(10_000, rel=0.005)
    assert result["facilities_by_type"] == {"water_point": 1}  # (100, 100) on the edge


def test_impact_geojson_lists_structures_without_personal_data(
    client: TestClient, grid: Grid, token_for: Callable[..., dict[str, str]]
) -> None:
    response = client.post(
        "/analysis/impact?f=geojson", json=corridor(200, 25), headers=token_for("planner")
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/geo+json")
    collection = response.json()
    assert collection["type"] == "FeatureCollection"
    ids = {feature["id"] for feature in collection["features"]}
    assert ids == {grid.structure_ids[(i, j)] for i in range(COLS) for j in (9, 10)}
    assert collection["numberReturned"] == 80
    for feature in collection["features"]:
        props = feature["properties"]
        assert not {"head_name", "phone"} & set(props)
        assert props["share_inside"] == 1
    people = sum(f["properties"]["people"] for f in collection["features"])
    assert people == sum(members(i, j) for i in range(10) for j in (9, 10))


# ---------------------------------------------------------------- summary
def test_summary_counts_nested_and_contested(
    client: TestClient, grid: Grid, token_for: Callable[..., dict[str, str]]
) -> None:
    mapper = token_for("mapper")

    def inside(name: str) -> list[tuple[int, int]]:
        x0, y0, x1, y1 = SETTLEMENTS[name]
        cells = [
            (i, j)
            for i in range(COLS)
            for j in range(ROWS)
            if x0 <= cell_box(i, j)[0]
            and cell_box(i, j)[2] <= x1
            and y0 <= cell_box(i, j)[1]
            and cell_box(i, j)[3] <= y1
        ]
        return cells

    for name in "ABC":
        response = client.get(f"/settlements/{grid.ids[name]}/summary", headers=mapper)
        assert response.status_code == 200, response.text
        body = response.json()
        cells = inside(name)
        straddler = 1 if name == "B" else 0  # three quarters of it lies in B
        assert body["structures"] == len(cells) + straddler
        enumerated = [c for c in cells if c[0] < 10]
        assert body["households"] == len(enumerated)
        x0, y0, x1, y1 = SETTLEMENTS[name]
        assert body["area_m2"] == pytest.approx((x1 - x0) * (y1 - y0), rel=0.005)
        assert body["density_structures_per_ha"] == pytest.approx(
            body["structures"] / ((x1 - x0) * (y1 - y0) / 10_000), rel=0.005
        )
    body = client.get(f"/settlements/{grid.ids['A']}/summary", headers=mapper).json()
    assert body["facilities_by_type"] == {"water_point": 2}  # (100,100) and (300,350)
    assert body["facilities_by_condition"] == {"water_point": {"unknown": 1, "working": 1}}
    assert body["basis"]["population_estimate"] == "estimated"
    assert body["basis"]["people"] == "counted"


def test_summary_estimates(db: BoundDatabase, grid: Grid, settings: Settings) -> None:
    result = summary(db, settlement_id=grid.ids["A"], settings=settings, role="admin")
    cells = [(i, j) for i in range(20) for j in range(ROWS)]
    enumerated = [(i, j) for i, j in cells if i < 10]
    people = sum(members(i, j) for i, j in enumerated)
    mean = people / len(enumerated)
    assert result["structures"] == 400
    assert result["structures_enumerated"] == 200
    assert result["share_enumerated"] == pytest.approx(0.5)
    assert result["people"] == people
    assert result["mean_household_size"] == pytest.approx(mean, abs=0.01)
    assert result["residential_structures_not_enumerated"] == 200
    # one household per enumerated structure
    assert result["people_estimated_unenumerated"] == pytest.approx(200 * 1 * mean, abs=0.1)
    assert result["population_estimate"] == pytest.approx(people + 200 * mean, abs=0.1)
    assert result["structures_by_use"] == {"residential": 400}


# ---------------------------------------------------------------- access
def test_access_counts_against_shapely(
    client: TestClient, grid: Grid, token_for: Callable[..., dict[str, str]]
) -> None:
    usable = [
        Point(x, y) for kind, cond, x, y in FACILITIES if kind == "water_point" and cond != "broken"
    ]
    boxes = grid.boxes()
    beyond = {key for key, b in boxes.items() if min(box(*b).distance(p) for p in usable) > 50}
    response = client.get(
        "/analysis/access",
        params={"facility_type": "water_point", "max_distance_m": 50},
        headers=token_for("mapper"),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["structures_total"] == len(boxes)
    assert body["structures_beyond"] == len(beyond)
    assert body["share_beyond"] == pytest.approx(len(beyond) / len(boxes), abs=1e-4)
    with_hh = {(i, j) for i in range(10) for j in range(ROWS)}
    assert body["households_beyond"] == len(beyond & with_hh)
    assert body["facilities_considered"] == 3

    response = client.get(
        "/analysis/access",
        params={"facility_type": "water_point", "max_distance_m": 50, "f": "geojson"},
        headers=token_for("planner"),
    )
    assert response.status_code == 200, response.text
    features = response.json()["features"]
    by_id = {v: k for k, v in grid.structure_ids.items()}
    assert {by_id[f["id"]] for f in features} == beyond
    for feature in features[:50]:
        key = by_id[feature["id"]]
        b = box(*boxes[key])
        distances = [b.distance(p) for p in usable]
        # geography (ellipsoid) against UTM, whose scale here is 1.00034
        assert feature["properties"]["nearest_distance_m"] == pytest.approx(
            min(distances), rel=0.001
        )


@pytest.mark.parametrize("distance", [48.5, 48.9, 55.4, 55.8])
def test_access_close_to_the_limit(
    db: BoundDatabase, grid: Grid, settings: Settings, distance: float
) -> None:
    """Distances within 1 % of the limit take the exact path; the answer must not change."""
    usable = [
        Point(x, y) for kind, cond, x, y in FACILITIES if kind == "water_point" and cond != "broken"
    ]
    boxes = grid.boxes()
    beyond = {k for k, b in boxes.items() if min(box(*b).distance(p) for p in usable) > distance}
    near_limit = [
        k for k, b in boxes.items() if abs(min(box(*b).distance(p) for p in usable) - distance) < 1
    ]
    assert near_limit  # the grid has structures 48.66 m and 55.6 m from a water point
    result = access(
        db,
        facility_type="water_point",
        max_distance_m=distance,
        settings=settings,
        role="admin",
    )
    assert result["structures_beyond"] == len(beyond)


def test_access_within_settlement(db: BoundDatabase, grid: Grid, settings: Settings) -> None:
    result = access(
        db,
        facility_type="toilet_block",
        max_distance_m=30,
        settlement_id=grid.ids["C"],
        settings=settings,
        role="admin",
    )
    toilet = Point(500, 300)
    cells = [(i, j) for i in range(15, 25) for j in range(10, 20)]
    near = [c for c in cells if box(*cell_box(*c)).distance(toilet) <= 30]
    assert result["structures_total"] == 100
    assert result["structures_beyond"] == 100 - len(near)


# ---------------------------------------------------------------- overlaps, density
def test_overlaps_feature_collection(
    client: TestClient, grid: Grid, token_for: Callable[..., dict[str, str]]
) -> None:
    response = client.get("/analysis/overlaps", headers=token_for("viewer"))
    assert response.status_code == 200, response.text
    collection = response.json()
    assert collection["type"] == "FeatureCollection"
    pairs = {
        (f["properties"]["settlement_a"], f["properties"]["settlement_b"]): f["properties"][
            "overlap_m2"
        ]
        for f in collection["features"]
    }
    a, b, c = grid.ids["A"], grid.ids["B"], grid.ids["C"]
    assert pairs.keys() == {(min(a, c), max(a, c)), (min(b, c), max(b, c))}  # A|B only touch
    for value in pairs.values():
        assert value == pytest.approx(100 * 200, rel=0.005)
    only = client.get(
        "/analysis/overlaps", params={"settlement_id": a}, headers=token_for("viewer")
    ).json()
    assert len(only["features"]) == 1


def test_density_grid_counts_each_structure_once(
    client: TestClient, grid: Grid, token_for: Callable[..., dict[str, str]]
) -> None:
    response = client.get(
        "/analysis/density",
        params={"settlement_id": grid.ids["A"], "cell_m": 100},
        headers=token_for("mapper"),
    )
    assert response.status_code == 200, response.text
    collection = response.json()
    cells = {
        (f["properties"]["i"], f["properties"]["j"]): f["properties"]
        for f in collection["features"]
    }
    # the origin is a multiple of 100 m, so A's 400 m square is 4 x 4 cells of 25
    assert len(cells) == 16
    assert {p["structures"] for p in cells.values()} == {25}
    assert sum(p["structures"] for p in cells.values()) == 400
    assert sum(p["households"] for p in cells.values()) == 200
    i0, j0 = int(E0 // 100), int(N0 // 100)
    assert set(cells) == {(i0 + di, j0 + dj) for di in range(4) for dj in range(4)}
    first = cells[(i0, j0)]
    expected = sum(members(i, j) for i in range(5) for j in range(5))
    assert first["people"] == expected
    assert first["structures_per_ha"] == 25.0


def test_impact_assigns_by_largest_share_not_stored_settlement(
    db: BoundDatabase, grid: Grid, settings: Settings, connection: Connection
) -> None:
    # stored as A, but three quarters of it lie in B: it counts once, in B
    connection.execute(
        text(
            "INSERT INTO structures (settlement_id, use, geom) VALUES (:a, 'business', "
            "ST_Transform(ST_MakeEnvelope(:x0, :y0, :x1, :y1, 32737), 4326))"
        ),
        {"a": grid.ids["A"], "x0": E0 + 398, "y0": N0 + 58, "x1": E0 + 406, "y1": N0 + 62},
    )
    body = ImpactRequest(**corridor(60, 1))  # y 59..61: only the new structure
    result = impact(db, request=body, settings=settings, role="admin")
    assert result["structures"] == 1
    assert [e["settlement_id"] for e in result["by_settlement"]] == [grid.ids["B"]]
    summary_b = summary(db, settlement_id=grid.ids["B"], settings=settings, role="admin")
    summary_a = summary(db, settlement_id=grid.ids["A"], settings=settings, role="admin")
    assert summary_b["structures_by_use"].get("business") == 1
    assert "business" not in summary_a["structures_by_use"]
