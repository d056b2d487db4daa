"""Coordinates far from every settlement: swapped axes refused, ``force=true``, hints, bounds."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, text

from geo.core.settings import Settings
from tests.layers.test_write import assert_problem, footprint, post, structure
from tests.support.db import insert_settlement

Headers = Callable[..., dict[str, str]]

# Two settlements ~10 km apart in Nairobi (Kibera, Mathare) and a point 440 km away (Mombasa).
KIBERA = "MULTIPOLYGON(((36.78 -1.32,36.80 -1.32,36.80 -1.30,36.78 -1.30,36.78 -1.32)))"
MATHARE = "MULTIPOLYGON(((36.85 -1.27,36.87 -1.27,36.87 -1.25,36.85 -1.25,36.85 -1.27)))"
MOMBASA = (39.66, -4.04)


@pytest.fixture
def nairobi(connection: Connection) -> dict[str, int]:
    return {
        "Kibera": insert_settlement(connection, "Kibera", KIBERA),
        "Mathare": insert_settlement(connection, "Mathare", MATHARE),
    }


@pytest.fixture
def mapper(token_for: Headers) -> dict[str, str]:
    return token_for("mapper", "wanjiku")


def swapped(geometry: dict[str, Any]) -> dict[str, Any]:
    ring = [[y, x] for x, y in geometry["coordinates"][0]]
    return {"type": "Polygon", "coordinates": [ring]}


def structures(conn: Connection) -> int:
    return int(conn.execute(text("SELECT count(*) FROM structures")).scalar_one())


def test_swapped_axes_are_refused_naming_the_swap(
    client: TestClient, mapper: dict[str, str], nairobi: dict[str, int], connection: Connection
) -> None:
    feature = {**structure(), "geometry": swapped(footprint())}
    body = assert_problem(post(client, feature, mapper), 422, "swapped")
    assert body["likely_swapped_axes"] is True
    assert "Kibera" in body["detail"] and "force=true" in body["detail"]
    assert body["nearest_settlement_km"] > 1000
    assert structures(connection) == 0
    # the same feature the right way round is stored
    assert post(client, structure(), mapper).status_code == 201


def test_far_from_every_settlement_needs_force(
    client: TestClient, mapper: dict[str, str], nairobi: dict[str, int], connection: Connection
) -> None:
    feature = {**structure(), "geometry": footprint(*MOMBASA)}
    body = assert_problem(post(client, feature, mapper), 422, "MAKAZI_MAX_KM_FROM_SETTLEMENTS")
    assert body["likely_swapped_axes"] is False
    assert "(Mathare)" in body["detail"] and "force=true" in body["detail"]
    assert structures(connection) == 0
    created = post(client, feature, mapper, force="true")
    assert created.status_code == 201, created.text
    assert created.json()["properties"]["settlement_id"] is None


def test_a_facility_in_a_collection_is_checked_per_feature(
    client: TestClient, mapper: dict[str, str], nairobi: dict[str, int], connection: Connection
) -> None:
    near = {"type": "Point", "coordinates": [36.79, -1.31]}
    far = {"type": "Point", "coordinates": [-1.31, 36.79]}
    fc = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": g, "properties": {"type": "water_point"}}
            for g in (near, far)
        ],
    }
    body = assert_problem(post(client, fc, mapper, collection="facilities"), 422, "refused")
    assert [e["index"] for e in body["errors"]] == [1]
    assert "swapped" in body["errors"][0]["reason"]
    assert connection.execute(text("SELECT count(*) FROM facilities")).scalar_one() == 0


def test_patch_that_moves_a_feature_away_is_refused(
    client: TestClient, mapper: dict[str, str], nairobi: dict[str, int]
) -> None:
    created = post(client, structure(), mapper)
    url = created.headers["location"]
    patch = {"geometry": swapped(footprint())}
    response = client.patch(
        url,
        content=json.dumps(patch),
        headers={
            **mapper,
            "If-Match": created.headers["etag"],
            "Content-Type": "application/merge-patch+json",
        },
    )
    assert_problem(response, 422, "swapped")
    assert client.get(url).json()["properties"]["version"] == 1


def test_no_settlements_no_check(client: TestClient, mapper: dict[str, str]) -> None:
    feature = {**structure(), "geometry": footprint(*MOMBASA)}
    assert post(client, feature, mapper).status_code == 201


class TestCheckOff:
    @pytest.fixture
    def app_settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"max_km_from_settlements": 0})

    def test_zero_turns_the_check_off(
        self, client: TestClient, mapper: dict[str, str], nairobi: dict[str, int]
    ) -> None:
        feature = {**structure(), "geometry": swapped(footprint())}
        assert post(client, feature, mapper).status_code == 201


def test_empty_bbox_with_swapped_axes_gets_a_hint(
    client: TestClient, mapper: dict[str, str], nairobi: dict[str, int]
) -> None:
    assert post(client, structure(), mapper).status_code == 201
    right = client.get("/collections/structures/items", params={"bbox": "36.78,-1.31,36.79,-1.30"})
    assert right.json()["numberReturned"] == 1 and "hint" not in right.json()
    wrong = client.get("/collections/structures/items", params={"bbox": "-1.31,36.78,-1.30,36.79"})
    assert wrong.status_code == 200
    doc = wrong.json()
    assert doc["numberReturned"] == 0
    assert "swapped" in doc["hint"] and "Kibera" in doc["hint"]
    # an empty box that is simply elsewhere gets no hint
    elsewhere = client.get("/collections/structures/items", params={"bbox": "10,10,11,11"})
    assert elsewhere.json()["numberReturned"] == 0 and "hint" not in elsewhere.json()


def test_impact_with_swapped_axes_gets_a_hint(
    client: TestClient, mapper: dict[str, str], nairobi: dict[str, int], token_for: Headers
) -> None:
    assert post(client, structure(), mapper).status_code == 201
    line = [[36.784, -1.3052], [36.787, -1.3049]]
    planner = token_for("planner")
    right = client.post(
        "/analysis/impact",
        json={"geometry": {"type": "LineString", "coordinates": line}, "buffer_m": 30},
        headers=planner,
    ).json()
    assert right["structures"] == 1 and right["hint"] is None
    flipped = [[y, x] for x, y in line]
    wrong = client.post(
        "/analysis/impact",
        json={"geometry": {"type": "LineString", "coordinates": flipped}, "buffer_m": 30},
        headers=planner,
    )
    assert wrong.status_code == 200, wrong.text
    assert wrong.json()["structures"] == 0
    assert "swapped" in wrong.json()["hint"]


def test_tilejson_bounds_come_from_the_settlements_not_outliers(
    client: TestClient, connection: Connection, nairobi: dict[str, int]
) -> None:
    # a third Nairobi settlement, one typed with swapped axes long ago, and a public trace far away
    insert_settlement(
        connection, "Mukuru", MATHARE.replace("36.85", "36.88").replace("36.87", "36.90")
    )
    insert_settlement(
        connection,
        "Typo",
        "MULTIPOLYGON(((-1.32 36.78,-1.30 36.78,-1.30 36.80,-1.32 36.80,-1.32 36.78)))",
    )
    connection.execute(
        text(
            "INSERT INTO traces (name, owner, visibility, content_sha256, geom) VALUES "
            "('far walk', 'x', 'public', 'abc', "
            "ST_GeomFromText('MULTILINESTRING((39.66 -4.04,39.67 -4.05))', 4326))"
        )
    )
    west, south, east, north = client.get("/tiles/tilejson.json").json()["bounds"]
    assert (west, south) == pytest.approx((36.78, -1.32))
    assert (east, north) == pytest.approx((36.90, -1.25))


def test_far_trace_is_kept_with_a_warning(
    client: TestClient, mapper: dict[str, str], nairobi: dict[str, int]
) -> None:
    from tests.traces.test_traces import gpx_track

    far = gpx_track([(-4.04 + i * 1e-5, 39.66, None) for i in range(5)])
    response = client.post(
        "/traces", content=far, headers={**mapper, "Content-Type": "application/gpx+xml"}
    )
    assert response.status_code == 201, response.text
    assert any("from the nearest settlement (Mathare)" in w for w in response.json()["warnings"])
    near = gpx_track([(-1.31 + i * 1e-5, 36.79, None) for i in range(5)])
    response = client.post(
        "/traces", content=near, headers={**mapper, "Content-Type": "application/gpx+xml"}
    )
    assert not any("nearest settlement" in w for w in response.json()["warnings"])


def test_geometries_with_antipodal_edges_are_measured_not_500(
    client: TestClient, mapper: dict[str, str], nairobi: dict[str, int]
) -> None:
    # an edge between antipodal points (pole to pole, 180 degrees of longitude) has no one
    # geodesic: PostGIS either refuses it (a 500 here) or calls every distance to it 0
    for line in ([[10, -90], [10, 90]], [[0, 0], [180, 0]]):
        road = {
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": line},
            "properties": {"type": "road"},
        }
        assert_problem(post(client, road, mapper, "facilities"), 422, "km from the nearest")
    empty = client.get("/collections/structures/items", params={"bbox": "0,-90,0.0001,90"})
    assert empty.status_code == 200, empty.text
    assert empty.json()["numberReturned"] == 0
    poles = (
        '<gpx version="1.1" xmlns="http://www.topografix.com/GPX/1/1">'
        '<wpt lat="90" lon="0"/><wpt lat="-90" lon="-180"/></gpx>'
    )
    response = client.post(
        "/traces", content=poles, headers={**mapper, "Content-Type": "application/gpx+xml"}
    )
    assert response.status_code == 201, response.text
    assert any("from the nearest settlement" in w for w in response.json()["warnings"])
