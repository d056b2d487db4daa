"""Every bad input answers a problem+json 4xx naming the field; timeouts answer 503."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine, text

from geo.analysis.common import fetch_json
from geo.core.settings import Settings
from tests.analysis.test_generated import E0, N0, build_grid, corridor
from tests.support.db import BoundDatabase

LINE = {"type": "LineString", "coordinates": [[36.80, -1.31], [36.81, -1.31]]}


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert "Traceback" not in response.text
    return body


@pytest.fixture
def viewer(token_for: Callable[..., dict[str, str]]) -> dict[str, str]:
    return token_for("viewer")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"buffer_m": 30}, "geometry"),
        ({"geometry": LINE, "buffer_m": 0}, "buffer_m"),
        ({"geometry": LINE, "buffer_m": -5}, "buffer_m"),
        ({"geometry": LINE, "buffer_m": 5001}, "buffer_m"),
        ({"geometry": LINE, "buffer_m": "wide"}, "buffer_m"),
        ({"geometry": LINE}, "buffer_m"),  # a line covers no area without a buffer
        ({"geometry": LINE, "buffer_m": 30, "min_overlap": 1.5}, "min_overlap"),
        ({"geometry": LINE, "buffer_m": 30, "crs": "EPSG:9999"}, "crs"),
        ({"geometry": {"type": "Circle", "coordinates": [0, 0]}, "buffer_m": 30}, "geometry.type"),
        ({"geometry": {"type": "LineString"}, "buffer_m": 30}, "geometry.coordinates"),
        (
            {"geometry": {"type": "LineString", "coordinates": [[1, 2]]}, "buffer_m": 30},
            "geometry.coordinates",
        ),
        (
            {"geometry": {"type": "LineString", "coordinates": "abc"}, "buffer_m": 30},
            "geometry.coordinates",
        ),
        ({"geometry": {"type": "Polygon", "coordinates": []}, "buffer_m": 30}, "geometry"),
        (
            {
                "geometry": {"type": "LineString", "coordinates": [[200, 0], [201, 0]]},
                "buffer_m": 30,
            },
            "geometry.coordinates",
        ),
        (
            {
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [
                        [
                            [36.80, -1.31],
                            [36.81, -1.30],
                            [36.81, -1.31],
                            [36.80, -1.30],
                            [36.80, -1.31],
                        ]
                    ],
                },
                "buffer_m": 30,
            },
            "geometry",
        ),  # a bow-tie
        (
            {
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[36.0, -1.0], [37.0, -1.0], [37.0, -2.0], [36.0, -1.0]]],
                }
            },
            "geometry",
        ),  # ~6,000 km², above 100 km²
        ({"geometry": LINE, "buffer_m": 30, "colour": "red"}, "colour"),
        ({"geometry": "LINESTRING(0 0, 1 1)", "buffer_m": 30}, "geometry"),
    ],
)
def test_impact_bad_input(
    client: TestClient, viewer: dict[str, str], body: dict[str, Any], field: str
) -> None:
    response = client.post("/analysis/impact", json=body, headers=viewer)
    assert response.status_code in (400, 422), response.text
    detail = problem(response, response.status_code)
    assert field in detail["detail"] or field in str(detail.get("errors", "")), detail


def test_impact_non_finite_and_too_many_vertices(
    client: TestClient, viewer: dict[str, str]
) -> None:
    response = client.post(
        "/analysis/impact",
        content=b'{"geometry": {"type": "LineString", "coordinates": [[NaN, 0], [1, 1]]},'
        b' "buffer_m": 30}',
        headers={**viewer, "Content-Type": "application/json"},
    )
    assert response.status_code in (400, 422)
    problem(response, response.status_code)
    many = [[36.80 + k * 1e-6, -1.31] for k in range(10_001)]
    body = problem(
        client.post(
            "/analysis/impact",
            json={"geometry": {"type": "LineString", "coordinates": many}, "buffer_m": 1},
            headers=viewer,
        ),
        422,
    )
    assert "10001 vertices" in body["detail"]
    body = problem(client.post("/analysis/impact", content=b"{not json", headers=viewer), 422)


def test_impact_area_limit_is_a_setting(
    settings: Settings, db: BoundDatabase, token_for: Callable[..., dict[str, str]]
) -> None:
    from app.main import create_app

    tight = settings.model_copy(update={"analysis_max_area_km2": 0.01, "analysis_max_buffer_m": 20})
    with TestClient(create_app(tight, database=db), raise_server_exceptions=False) as client:
        body = problem(
            client.post(
                "/analysis/impact",
                json={"geometry": LINE, "buffer_m": 10},
                headers=token_for("viewer"),
            ),
            422,
        )
        assert "buffer_m" in body["detail"] and "MAKAZI_ANALYSIS_MAX_AREA_KM2" in body["detail"]
        body = problem(
            client.post(
                "/analysis/impact",
                json={"geometry": LINE, "buffer_m": 25},
                headers=token_for("viewer"),
            ),
            422,
        )
        assert "buffer_m" in body["detail"] and "20" in body["detail"]


def test_impact_accepts_other_crs_and_features(
    client: TestClient, connection: Connection, viewer: dict[str, str]
) -> None:
    build_grid(connection)
    utm = corridor(200, 25)
    expected = client.post("/analysis/impact", json=utm, headers=viewer).json()["structures"]
    assert expected == 80
    # the same line in EPSG:3857, as a Feature, crs in the query string
    from pyproj import Transformer

    to_3857 = Transformer.from_crs(32737, 3857, always_xy=True)
    coords = [list(to_3857.transform(x, y)) for x, y in utm["geometry"]["coordinates"]]  # type: ignore[index]
    feature = {
        "type": "Feature",
        "properties": {},
        "geometry": {"type": "LineString", "coordinates": coords},
    }
    response = client.post(
        "/analysis/impact?crs=EPSG:3857",
        json={"geometry": feature, "buffer_m": 25},
        headers=viewer,
    )
    assert response.status_code == 200, response.text
    assert response.json()["structures"] == expected
    # EPSG:4326 named by code means latitude first (OGC API Part 2)
    to_4326 = Transformer.from_crs(32737, 4326, always_xy=True)
    latlon = [list(to_4326.transform(x, y))[::-1] for x, y in utm["geometry"]["coordinates"]]  # type: ignore[index]
    response = client.post(
        "/analysis/impact",
        json={
            "geometry": {"type": "LineString", "coordinates": latlon},
            "buffer_m": 25,
            "crs": "EPSG:4326",
        },
        headers=viewer,
    )
    assert response.json()["structures"] == expected


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"facility_type": "well", "max_distance_m": 100}, 400, "facility_type"),
        ({"facility_type": "water_point", "max_distance_m": 0}, 400, "max_distance_m"),
        ({"facility_type": "water_point", "max_distance_m": -1}, 400, "max_distance_m"),
        ({"facility_type": "water_point", "max_distance_m": 1e9}, 400, "max_distance_m"),
        ({"facility_type": "water_point", "max_distance_m": "nan"}, 400, "max_distance_m"),
        ({"facility_type": "water_point", "max_distance_m": "far"}, 400, "max_distance_m"),
        ({"max_distance_m": 100}, 400, "facility_type"),
        (
            {"facility_type": "water_point", "max_distance_m": 100, "settlement_id": 987654},
            404,
            "settlement_id",
        ),
    ],
)
def test_access_bad_input(
    client: TestClient, viewer: dict[str, str], params: dict[str, Any], status: int, field: str
) -> None:
    body = problem(client.get("/analysis/access", params=params, headers=viewer), status)
    assert field in body["detail"]


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"settlement_id": 987654, "cell_m": 100}, 404, "settlement_id"),
        ({"cell_m": 100}, 400, "settlement_id"),
        ({"settlement_id": "SELF", "cell_m": 1}, 400, "cell_m"),
        ({"settlement_id": "SELF", "cell_m": 0}, 400, "cell_m"),
        ({"settlement_id": "SELF", "cell_m": -10}, 400, "cell_m"),
        ({"settlement_id": "SELF", "cell_m": "big"}, 400, "cell_m"),
        ({"settlement_id": "SELF", "cell_m": 1e6}, 400, "cell_m"),
        ({"settlement_id": "SELF", "cell_m": 10}, 400, "cell_m"),  # 40 x 40 m: too many cells?
    ],
)
def test_density_bad_input(
    client: TestClient,
    connection: Connection,
    settings: Settings,
    viewer: dict[str, str],
    params: dict[str, Any],
    status: int,
    field: str,
) -> None:
    sid = connection.execute(
        text(
            "INSERT INTO settlements (name, geom) VALUES ('Wide', ST_Multi(ST_Transform("
            "ST_MakeEnvelope(:x, :y, :x + 2000, :y + 2000, 32737), 4326))) RETURNING id"
        ),
        {"x": E0, "y": N0},
    ).scalar_one()
    params = {k: (sid if v == "SELF" else v) for k, v in params.items()}
    if params.get("cell_m") == 10:
        # 2 km / 10 m = 200 x 200 cells = 40,000 > the default limit of 10,000
        assert settings.analysis_max_cells < 40_000
    body = problem(client.get("/analysis/density", params=params, headers=viewer), status)
    assert field in body["detail"] or field in str(body.get("errors"))


def test_unknown_settlement_is_404(client: TestClient, viewer: dict[str, str]) -> None:
    body = problem(client.get("/settlements/987654/summary"), 404)
    assert "987654" in body["detail"]
    problem(client.get("/settlements/99999999999999999999/summary"), 404)
    problem(client.get("/settlements/abc/summary"), 422)
    body = problem(
        client.get("/analysis/overlaps", params={"settlement_id": 987654}, headers=viewer), 404
    )
    assert "settlement_id" in body["detail"]


@contextmanager
def settlements_locked(engine: Engine) -> Iterator[None]:
    """Hold the settlements table locked from another session for the block's duration."""
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with engine.connect() as other:
            other.execute(text("LOCK TABLE settlements IN ACCESS EXCLUSIVE MODE"))
            locked.set()
            release.wait(30)
            other.rollback()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(10)
        yield
    finally:
        release.set()
        holder.join()


def test_statement_timeout_answers_503(
    settings: Settings, db: BoundDatabase, engine: Engine
) -> None:
    """A settlements table locked by another session makes the summary wait past the timeout."""
    from app.main import create_app

    quick = settings.model_copy(update={"analysis_timeout_ms": 200})
    app = create_app(quick, database=db)
    with (
        settlements_locked(engine),
        TestClient(app, raise_server_exceptions=False) as client,
    ):
        body = problem(client.get("/settlements/1/summary"), 503)
    assert "timeout" in body["detail"]


def test_fetch_json_cancels_slow_statement(db: BoundDatabase) -> None:
    from sqlalchemy.exc import DBAPIError

    with pytest.raises(DBAPIError) as caught:
        fetch_json(db, text("SELECT pg_sleep(2)::text"), {}, timeout_ms=100)
    assert "statement timeout" in str(caught.value)


def test_impact_body_size_limit(
    settings: Settings, db: BoundDatabase, token_for: Callable[..., dict[str, str]]
) -> None:
    from app.main import create_app

    small = settings.model_copy(update={"max_json_body_mb": 1})
    padding = " " * (1024 * 1024 + 10)
    with TestClient(create_app(small, database=db), raise_server_exceptions=False) as client:
        body = problem(
            client.post(
                "/analysis/impact",
                content=('{"geometry": null,' + padding + '"buffer_m": 1}').encode(),
                headers={**token_for("viewer"), "Content-Type": "application/json"},
            ),
            413,
        )
    assert "MAKAZI_MAX_JSON_BODY_MB" in body["detail"]


def test_impact_malformed_position_names_the_shape_not_numpy(
    client: TestClient, viewer: dict[str, str]
) -> None:
    body = {"geometry": {"type": "Point", "coordinates": [36.787]}, "buffer_m": 30}
    response = client.post("/analysis/impact", json=body, headers=viewer)
    detail = problem(response, response.status_code)["detail"]
    assert response.status_code in (400, 422)
    assert "geometry.coordinates" in detail and "[x, y]" in detail, detail
    assert "array" not in detail and "ndarray" not in detail, detail
