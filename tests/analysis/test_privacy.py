"""Small-count suppression per role, per-feature output only for planners, no personal data."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, text

from geo.core.privacy import MIN_COUNT, Suppressor, sees_features, sees_raw_counts
from geo.core.settings import Settings
from tests.analysis.test_generated import E0, N0, Grid, build_grid, corridor

# A small settlement 2 km east of the grid: 3 structures, 2 households of 4 and 6.
SMALL = (2000, 0, 2100, 100)


@pytest.fixture
def small(connection: Connection) -> int:
    x0, y0, x1, y1 = SMALL
    sid = connection.execute(
        text(
            "INSERT INTO settlements (name, geom) VALUES ('Tiny', ST_Multi(ST_Transform("
            "ST_MakeEnvelope(:x0, :y0, :x1, :y1, 32737), 4326))) RETURNING id"
        ),
        {"x0": E0 + x0, "y0": N0 + y0, "x1": E0 + x1, "y1": N0 + y1},
    ).scalar_one()
    ids = [
        connection.execute(
            text(
                "INSERT INTO structures (use, geom) VALUES (:u, ST_Transform("
                "ST_MakeEnvelope(:x, :y, :x + 4, :y + 4, 32737), 4326)) RETURNING id"
            ),
            {"u": use, "x": E0 + x0 + 10 + 20 * k, "y": N0 + y0 + 10},
        ).scalar_one()
        for k, use in enumerate(["residential", "residential", "business"])
    ]
    connection.execute(
        text(
            "INSERT INTO households (structure_id, members, head_name, phone) "
            "VALUES (:s, :m, 'Secret Name', '+254700000000')"
        ),
        [{"s": ids[0], "m": 4}, {"s": ids[1], "m": 6}],
    )
    return int(sid)


@pytest.mark.parametrize("role", [None, "viewer"])
def test_summary_suppressed_for_anonymous_and_viewer(
    client: TestClient, small: int, token_for: Callable[..., dict[str, str]], role: str | None
) -> None:
    headers = token_for(role) if role else {}
    body = client.get(f"/settlements/{small}/summary", headers=headers).json()
    for name in (
        "structures",
        "households",
        "people",
        "mean_household_size",
        "density_structures_per_ha",
        "population_estimate",
    ):
        assert body[name] is None, name
        assert name in body["suppressed"]
    assert body["structures_by_use"] == {"residential": None, "business": None}
    assert "structures_by_use.residential" in body["suppressed"]
    assert body["area_m2"] == pytest.approx(10_000, rel=0.005)  # areas are not counts
    assert "Secret" not in str(body) and "+254" not in str(body)


@pytest.mark.parametrize("role", ["mapper", "enumerator", "planner", "admin"])
def test_summary_raw_for_mapper_and_above(
    client: TestClient, small: int, token_for: Callable[..., dict[str, str]], role: str
) -> None:
    body = client.get(f"/settlements/{small}/summary", headers=token_for(role)).json()
    assert body["structures"] == 3
    assert body["households"] == 2
    assert body["people"] == 10
    assert body["mean_household_size"] == 5
    assert body["structures_by_use"] == {"residential": 2, "business": 1}
    assert body["suppressed"] == []
    assert "Secret" not in str(body) and "+254" not in str(body)


def test_summary_needs_token_when_public_read_is_off(
    settings: Settings, db: object, small: int, token_for: Callable[..., dict[str, str]]
) -> None:
    from app.main import create_app

    app = create_app(settings.model_copy(update={"public_read": False}), database=db)  # type: ignore[arg-type]
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get(f"/settlements/{small}/summary")
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/problem+json")
        assert (
            client.get(f"/settlements/{small}/summary", headers=token_for("viewer")).status_code
            == 200
        )


def test_analyses_need_a_token(client: TestClient, small: int) -> None:
    assert client.post("/analysis/impact", json=corridor(200, 25)).status_code == 401
    assert client.get("/analysis/overlaps").status_code == 401
    assert (
        client.get(
            "/analysis/access", params={"facility_type": "water_point", "max_distance_m": 50}
        ).status_code
        == 401
    )
    assert (
        client.get("/analysis/density", params={"settlement_id": small, "cell_m": 50}).status_code
        == 401
    )


def test_impact_suppression_per_role(
    client: TestClient, connection: Connection, token_for: Callable[..., dict[str, str]]
) -> None:
    build_grid(connection)
    # y = 100 +- 1 takes only the straddler: one structure, no household
    body = corridor(100, 1)
    viewer = client.post("/analysis/impact", json=body, headers=token_for("viewer")).json()
    assert viewer["structures"] is None and "structures" in viewer["suppressed"]
    assert viewer["by_settlement"][0]["structures"] is None
    assert "by_settlement[0].structures" in viewer["suppressed"]
    assert viewer["facilities_by_type"] == {"water_point": None}
    mapper = client.post("/analysis/impact", json=body, headers=token_for("mapper")).json()
    assert mapper["structures"] == 1 and mapper["suppressed"] == []
    # large counts are shown to viewers too
    big = client.post("/analysis/impact", json=corridor(200, 25), headers=token_for("viewer"))
    assert big.json()["structures"] == 80


def test_geojson_output_is_for_planners(
    client: TestClient, grid_small: None, token_for: Callable[..., dict[str, str]]
) -> None:
    for role in ("viewer", "mapper", "enumerator"):
        response = client.post(
            "/analysis/impact?f=geojson", json=corridor(200, 25), headers=token_for(role)
        )
        assert response.status_code == 403, role
        response = client.get(
            "/analysis/access",
            params={"facility_type": "water_point", "max_distance_m": 50, "f": "geojson"},
            headers=token_for(role),
        )
        assert response.status_code == 403, role
    response = client.post(
        "/analysis/impact?f=geojson", json=corridor(200, 25), headers=token_for("admin")
    )
    assert response.status_code == 200
    assert "Secret" not in response.text and "head_name" not in response.text


@pytest.fixture
def grid_small(connection: Connection) -> Grid:
    return build_grid(connection)


def test_density_and_access_suppressed_for_viewer(
    client: TestClient, grid_small: Grid, token_for: Callable[..., dict[str, str]]
) -> None:
    viewer = token_for("viewer")
    response = client.get(
        "/analysis/density",
        params={"settlement_id": grid_small.ids["B"], "cell_m": 100},
        headers=viewer,
    )
    collection = response.json()
    assert collection["features"]
    for feature in collection["features"]:
        props = feature["properties"]
        assert props["households"] is None  # B has no households: 0 < 5
        assert "households" in props["suppressed"]
        assert props["structures"] is None or props["structures"] >= MIN_COUNT
    assert "households" in collection["suppressed"]
    access = client.get(
        "/analysis/access",
        params={
            "facility_type": "toilet_block",
            "max_distance_m": 10,
            "settlement_id": grid_small.ids["C"],
        },
        headers=viewer,
    ).json()
    assert access["households_total"] is None and "households_total" in access["suppressed"]
    assert access["share_households_beyond"] is None
    assert access["structures_total"] == 100


def test_suppressor_rules() -> None:
    assert not sees_raw_counts(None) and not sees_raw_counts("viewer")
    assert sees_raw_counts("mapper") and sees_raw_counts("admin")
    assert not sees_features("enumerator") and sees_features("planner")
    hide = Suppressor(active=True)
    assert hide.counts({"a": 4, "b": 5, "c": 0}, "") == {"a": None, "b": 5, "c": None}
    # one small cell in a breakdown drags the next smallest with it
    assert hide.breakdown({"x": 100, "y": 6, "z": 2}, "by") == {"x": 100, "y": None, "z": None}
    off = Suppressor(active=False)
    assert off.counts({"a": 1}, "") == {"a": 1} and off.suppressed == []
