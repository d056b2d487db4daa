"""Analyses on real Kibera data, cross-checked with shapely + pyproj in UTM 37S.

Data (../shared/samples/geo/kenya, © OpenStreetMap contributors, ODbL; used as
test fixtures only): the Map Kibera village and ward boundaries (22 polygons,
villages and wards overlapping as real claims do), the Map Kibera WASH survey
water points (792, with ``operational_status``), the railway line from the
Map Kibera KML (the railway reserve is a real relocation case), and schools,
health and security points as point structures.

The expected numbers are computed here independently: geometries projected
with pyproj to EPSG:32737 and measured with shapely.  Areas must agree within
0.5 %, counts exactly.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pytest
import shapely
from fastapi.testclient import TestClient
from pyproj import Transformer
from shapely.geometry import mapping
from sqlalchemy import Connection, text

from tests.support.samples import SAMPLES

KENYA = SAMPLES / "geo" / "kenya"
# ../shared/samples sits beside every checkout (CI included): missing data is a failure, not
# a reason to skip.

_TO_UTM = Transformer.from_crs(4326, 32737, always_xy=True)


def utm(geom: Any) -> Any:
    """Project a lon/lat shapely geometry to UTM 37S with pyproj."""
    return shapely.transform(geom, lambda xy: np.column_stack(_TO_UTM.transform(*xy.T)))


@dataclass(frozen=True)
class Kibera:
    names: list[str]
    boundaries: list[Any]  # lon/lat polygons
    water: list[tuple[Any, str | None]]  # (point, condition)
    structures: list[tuple[Any, str]]  # (point, use)
    railway: Any  # lon/lat MultiLineString


@lru_cache(maxsize=1)
def load() -> Kibera:
    import geopandas as gpd

    boundary = gpd.read_file(KENYA / "kiberatb__Boundary.shp").to_crs(4326)
    names = [
        html.unescape(name) if isinstance(name, str) else f"Unnamed {k}"
        for k, name in enumerate(boundary["name"])
    ]
    wash = gpd.read_file(KENYA / "mapkibera-watsan__features-osm.geojson").to_crs(4326)
    conditions = {"operational": "working", "non_operational": "broken"}
    water = [
        (shapely.force_2d(geom), conditions.get(status) if isinstance(status, str) else None)
        for geom, status in zip(wash.geometry, wash["operational_status"], strict=True)
    ]
    structures = []
    for file, use in (("education", "school"), ("health", "clinic"), ("security", "other")):
        frame = gpd.read_file(KENYA / f"kiberatb__{file}.shp").to_crs(4326)
        structures += [(shapely.force_2d(g), use) for g in frame.geometry if g is not None]
    rail = gpd.read_file(KENYA / "kiberatb__kibera.kml", layer="Railway_Rail_Core")
    railway = shapely.force_2d(shapely.MultiLineString(list(rail.geometry)))
    return Kibera(names, list(boundary.geometry), water, structures, railway)


@dataclass
class Loaded:
    data: Kibera
    settlement_ids: list[int]
    structure_ids: list[int]


@pytest.fixture
def kibera(connection: Connection) -> Loaded:
    data = load()
    ids = [
        connection.execute(
            text(
                "INSERT INTO settlements (name, source, geom) VALUES "
                "(:n, 'Map Kibera (OSM)', ST_Multi(ST_GeomFromWKB(:g, 4326))) RETURNING id"
            ),
            {"n": name, "g": shapely.to_wkb(geom)},
        ).scalar_one()
        for name, geom in zip(data.names, data.boundaries, strict=True)
    ]
    structure_ids = [
        connection.execute(
            text(
                "INSERT INTO structures (use, geom) VALUES (:u, ST_GeomFromWKB(:g, 4326)) "
                "RETURNING id"
            ),
            {"u": use, "g": shapely.to_wkb(point)},
        ).scalar_one()
        for point, use in data.structures
    ]
    connection.execute(
        text(
            "INSERT INTO facilities (type, condition, geom) "
            "VALUES ('water_point', :c, ST_GeomFromWKB(:g, 4326))"
        ),
        [{"c": condition, "g": shapely.to_wkb(point)} for point, condition in data.water],
    )
    return Loaded(data, ids, structure_ids)


def test_railway_reserve_impact(
    client: TestClient, kibera: Loaded, token_for: Callable[..., dict[str, str]]
) -> None:
    data = kibera.data
    body = {"geometry": mapping(data.railway), "buffer_m": 30}
    response = client.post("/analysis/impact", json=body, headers=token_for("planner"))
    assert response.status_code == 200, response.text
    result = response.json()

    reserve = utm(data.railway).buffer(30)
    assert result["buffer_area_m2"] == pytest.approx(reserve.area, rel=0.005)
    taken = [k for k, (p, _) in enumerate(data.structures) if reserve.intersects(utm(p))]
    assert result["structures"] == len(taken) > 0
    by_use: dict[str, int] = {}
    for k in taken:
        by_use[data.structures[k][1]] = by_use.get(data.structures[k][1], 0) + 1
    assert result["structures_by_use"] == by_use
    water = sum(1 for p, _ in data.water if reserve.intersects(utm(p)))
    assert result["facilities_by_type"] == ({"water_point": water} if water else {})

    # each point counts once: in the smallest boundary holding it (no share differs)
    expected: dict[int | None, int] = {}
    for k in taken:
        point = data.structures[k][0]
        holders = [
            (shapely.area(b), sid)
            for b, sid in zip(data.boundaries, kibera.settlement_ids, strict=True)
            if b.covers(point)
        ]
        home = min(holders)[1] if holders else None
        expected[home] = expected.get(home, 0) + 1
    got = {e["settlement_id"]: e["structures"] for e in result["by_settlement"]}
    assert got == expected

    features = client.post(
        "/analysis/impact?f=geojson", json=body, headers=token_for("planner")
    ).json()["features"]
    assert sorted(f["id"] for f in features) == sorted(kibera.structure_ids[k] for k in taken)


def test_village_summaries(
    client: TestClient, kibera: Loaded, token_for: Callable[..., dict[str, str]]
) -> None:
    data = kibera.data
    headers = token_for("mapper")
    for boundary, sid in zip(data.boundaries, kibera.settlement_ids, strict=True):
        body = client.get(f"/settlements/{sid}/summary", headers=headers).json()
        assert body["area_m2"] == pytest.approx(utm(boundary).area, rel=0.005)
        inside = [use for p, use in data.structures if boundary.covers(p)]
        assert body["structures"] == len(inside)
        by_use = {use: inside.count(use) for use in set(inside)}
        assert body["structures_by_use"] == by_use
        conditions: dict[str, int] = {}
        for point, condition in data.water:
            if boundary.intersects(point):
                key = condition or "unknown"
                conditions[key] = conditions.get(key, 0) + 1
        if conditions:
            assert body["facilities_by_type"] == {"water_point": sum(conditions.values())}
            assert body["facilities_by_condition"] == {"water_point": conditions}
        else:
            assert body["facilities_by_type"] == {}


def test_overlapping_claims(
    client: TestClient, kibera: Loaded, token_for: Callable[..., dict[str, str]]
) -> None:
    data = kibera.data
    expected = {}
    for a in range(len(data.boundaries)):
        for b in range(a + 1, len(data.boundaries)):
            overlap = utm(data.boundaries[a]).intersection(utm(data.boundaries[b])).area
            if overlap > 1:
                ids = sorted((kibera.settlement_ids[a], kibera.settlement_ids[b]))
                expected[tuple(ids)] = overlap
    assert expected  # wards and villages overlap in the real data
    collection = client.get("/analysis/overlaps", headers=token_for("viewer")).json()
    got = {
        (f["properties"]["settlement_a"], f["properties"]["settlement_b"]): f["properties"][
            "overlap_m2"
        ]
        for f in collection["features"]
        if f["properties"]["overlap_m2"] > 1
    }
    assert got.keys() == expected.keys()
    for pair, area in expected.items():
        assert got[pair] == pytest.approx(area, rel=0.005)


def test_access_to_working_water(
    client: TestClient, kibera: Loaded, token_for: Callable[..., dict[str, str]]
) -> None:
    data = kibera.data
    usable = shapely.MultiPoint([utm(p) for p, c in data.water if c != "broken"])
    distances = [utm(p).distance(usable) for p, _ in data.structures]
    beyond = sum(1 for d in distances if d > 100)
    # geography and UTM differ by 0.04 % here: points this close to 100 m could go either way
    unsure = sum(1 for d in distances if abs(d - 100) < 0.1)
    body = client.get(
        "/analysis/access",
        params={"facility_type": "water_point", "max_distance_m": 100},
        headers=token_for("mapper"),
    ).json()
    assert body["structures_total"] == len(data.structures)
    assert abs(body["structures_beyond"] - beyond) <= unsure
    assert body["facilities_considered"] == sum(1 for _, c in data.water if c != "broken")

    features = client.get(
        "/analysis/access",
        params={"facility_type": "water_point", "max_distance_m": 100, "f": "geojson"},
        headers=token_for("planner"),
    ).json()["features"]
    assert len(features) == body["structures_beyond"]
    index = {sid: k for k, sid in enumerate(kibera.structure_ids)}
    for feature in features:
        nearest = distances[index[feature["id"]]]
        assert feature["properties"]["nearest_distance_m"] == pytest.approx(nearest, rel=0.002)


def test_density_grid_of_largest_village(
    client: TestClient, kibera: Loaded, token_for: Callable[..., dict[str, str]]
) -> None:
    data = kibera.data
    counts = [sum(1 for p, _ in data.structures if b.covers(p)) for b in data.boundaries]
    k = int(np.argmax(counts))
    cells: dict[tuple[int, int], int] = {}
    for point, _ in data.structures:
        if data.boundaries[k].covers(point):
            x, y = utm(point).coords[0]
            key = (int(x // 100), int(y // 100))
            cells[key] = cells.get(key, 0) + 1
    collection = client.get(
        "/analysis/density",
        params={"settlement_id": kibera.settlement_ids[k], "cell_m": 100},
        headers=token_for("mapper"),
    ).json()
    got = {
        (f["properties"]["i"], f["properties"]["j"]): f["properties"]["structures"]
        for f in collection["features"]
    }
    assert got == cells
    assert sum(got.values()) == counts[k]
    # each cell polygon is the 100 m square in UTM 37S
    for feature in collection["features"][:5]:
        square = utm(shapely.geometry.shape(feature["geometry"]))
        assert square.area == pytest.approx(10_000, rel=0.001)
