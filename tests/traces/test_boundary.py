"""Perimeter walk -> boundary: closed and open walks, spikes, writing a settlement version."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pyproj import Transformer
from shapely.geometry import Polygon, shape
from shapely.ops import transform
from sqlalchemy import Connection, text

from geo.traces.perimeter import OpenWalk, boundary_polygon, remove_spikes

Auth = Callable[..., dict[str, str]]
TO_WGS84 = Transformer.from_crs(32737, 4326, always_xy=True)
TO_UTM = Transformer.from_crs(4326, 32737, always_xy=True)
# An irregular settlement outline in UTM 37S, around Kibera (metres).
OUTLINE = [
    (255_000.0, 9_854_000.0),
    (255_180.0, 9_853_980.0),
    (255_260.0, 9_854_090.0),
    (255_210.0, 9_854_230.0),
    (255_090.0, 9_854_260.0),
    (254_990.0, 9_854_150.0),
]


def perimeter_walk(
    closed: bool, seed: int = 3, spacing_m: float = 2.0
) -> list[tuple[float, float]]:
    """Walk the outline in UTM with GPS noise (+-0.4 m), ending at the start or 120 m short."""
    rng = np.random.default_rng(seed)
    ring = [*OUTLINE, OUTLINE[0]]
    points: list[tuple[float, float]] = []
    for (x0, y0), (x1, y1) in itertools.pairwise(ring):
        steps = max(1, int(math.hypot(x1 - x0, y1 - y0) / spacing_m))
        for i in range(steps):
            t = i / steps
            points.append((x0 + t * (x1 - x0), y0 + t * (y1 - y0)))
    if closed:
        points.append(ring[0])
    else:
        points = points[: -int(120 / spacing_m)]
    noise = rng.uniform(-0.4, 0.4, size=(len(points), 2))
    return [(x + dx, y + dy) for (x, y), (dx, dy) in zip(points, noise, strict=True)]


def gpx_of(utm_points: list[tuple[float, float]]) -> bytes:
    rows = []
    for i, (x, y) in enumerate(utm_points):
        lon, lat = TO_WGS84.transform(x, y)
        seconds = i
        rows.append(
            f'<trkpt lat="{lat:.8f}" lon="{lon:.8f}"><time>2024-05-01T'
            f"{8 + seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}Z</time></trkpt>"
        )
    return (
        '<gpx version="1.1" xmlns="http://www.topografix.com/GPX/1/1"><trk><trkseg>'
        + "".join(rows)
        + "</trkseg></trk></gpx>"
    ).encode()


def upload(client: TestClient, headers: dict[str, str], body: bytes) -> int:
    response = client.post(
        "/traces", content=body, headers={**headers, "Content-Type": "application/gpx+xml"}
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def test_closed_walk_becomes_polygon(client: TestClient, token_for: Auth) -> None:
    headers = token_for("mapper")
    trace_id = upload(client, headers, gpx_of(perimeter_walk(closed=True)))
    response = client.post(f"/traces/{trace_id}/boundary", headers=headers)
    assert response.status_code == 200, response.text
    feature = response.json()
    assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
    props = feature["properties"]
    truth = Polygon(OUTLINE)
    assert abs(props["area_m2"] - truth.area) / truth.area < 0.005
    assert abs(props["perimeter_m"] - truth.length) / truth.length < 0.01
    assert props["closure_gap_m"] < 2
    # the returned lon/lat polygon, projected back, has the same area
    polygon = transform(TO_UTM.transform, shape(feature["geometry"]))
    assert polygon.is_valid
    assert abs(polygon.area - truth.area) / truth.area < 0.005


def test_open_walk_is_422_with_the_gap(client: TestClient, token_for: Auth) -> None:
    headers = token_for("mapper")
    walk = perimeter_walk(closed=False)
    trace_id = upload(client, headers, gpx_of(walk))
    response = client.post(f"/traces/{trace_id}/boundary", headers=headers)
    assert response.status_code == 422
    problem = response.json()
    gap = math.dist(walk[0], walk[-1])
    assert abs(problem["closure_gap_m"] - gap) < 1.0
    assert "does not close" in problem["detail"]
    # a looser max_gap_m accepts it
    loose = client.post(
        f"/traces/{trace_id}/boundary", params={"max_gap_m": gap + 10}, headers=headers
    )
    assert loose.status_code == 200
    assert abs(loose.json()["properties"]["closure_gap_m"] - gap) < 1.0


def test_a_one_point_walk_is_422_not_500(client: TestClient, token_for: Auth) -> None:
    headers = token_for("mapper")
    trace_id = upload(client, headers, gpx_of(OUTLINE[:1]))
    response = client.post(f"/traces/{trace_id}/boundary", headers=headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "point" in response.json()["detail"]


def test_boundary_needs_mapper_and_visibility(client: TestClient, token_for: Auth) -> None:
    owner = token_for("mapper", "walker")
    trace_id = upload(client, owner, gpx_of(perimeter_walk(closed=True)))
    assert client.post(f"/traces/{trace_id}/boundary").status_code == 401
    assert (
        client.post(f"/traces/{trace_id}/boundary", headers=token_for("viewer")).status_code == 403
    )
    # private trace: another mapper cannot see it
    other = token_for("mapper", "stranger")
    assert client.post(f"/traces/{trace_id}/boundary", headers=other).status_code == 404


def test_writes_a_settlement_version_with_if_match(
    client: TestClient, token_for: Auth, connection: Connection
) -> None:
    settlement_id = connection.execute(
        text(
            "INSERT INTO settlements (name, geom) VALUES ('Walked', "
            "ST_Multi(ST_Buffer(ST_SetSRID(ST_MakePoint(36.78, -1.31), 4326), 0.001))) "
            "RETURNING id"
        )
    ).scalar_one()
    headers = token_for("mapper", "surveyor")
    trace_id = upload(client, headers, gpx_of(perimeter_walk(closed=True)))
    url = f"/traces/{trace_id}/boundary"
    params = {"settlement_id": settlement_id}
    assert client.post(url, params=params, headers=headers).status_code == 428
    stale = client.post(url, params=params, headers={**headers, "If-Match": '"7"'})
    assert stale.status_code == 412 and stale.headers["etag"] == '"1"'
    missing = client.post(
        url, params={"settlement_id": 987654}, headers={**headers, "If-Match": '"1"'}
    )
    assert missing.status_code == 404
    written = client.post(url, params=params, headers={**headers, "If-Match": '"1"'})
    assert written.status_code == 200, written.text
    assert written.headers["etag"] == '"2"'
    assert written.json()["properties"]["settlement_version"] == 2
    row = connection.execute(
        text(
            "SELECT version, updated_by, ST_Area(ST_Transform(geom, 32737)) AS area "
            "FROM settlements WHERE id = :i"
        ),
        {"i": settlement_id},
    ).one()
    assert row.version == 2 and row.updated_by == "surveyor"
    assert abs(row.area - Polygon(OUTLINE).area) / Polygon(OUTLINE).area < 0.005
    history = connection.execute(
        text(
            "SELECT action, changed_by, changes ? 'geom' AS geom_changed FROM feature_history "
            "WHERE collection = 'settlements' AND feature_id = :i AND version = 2"
        ),
        {"i": settlement_id},
    ).one()
    assert history.action == "update" and history.changed_by == "surveyor"
    assert history.geom_changed


def test_spike_and_self_crossing_are_cleaned() -> None:
    square = [(0.0, 0.0), (50.0, 0.0), (100.0, 0.0), (100.0, 100.0)]
    # an out-and-back excursion of 40 m from the top edge
    square += [(60.0, 100.0), (55.0, 140.0), (50.0, 100.0), (0.0, 100.0), (0.0, 1.0)]
    result = boundary_polygon(square, max_gap_m=5, simplify_m=0.5)
    assert result.polygon.is_valid
    assert abs(result.area_m2 - 10_000) < 300  # the thin spike (~200 m²) is gone or tiny
    # a figure of eight: two lobes; the larger one is kept, with a warning
    eight = [(0.0, 0.0), (100.0, 100.0), (100.0, 0.0), (0.0, 100.0), (-60.0, 50.0), (0.0, 1.0)]
    result = boundary_polygon(eight, max_gap_m=5, simplify_m=0)
    assert result.polygon.is_valid and result.warnings
    with pytest.raises(OpenWalk):
        boundary_polygon([(0, 0), (10, 0), (10, 10), (0, 10), (0, 60)], max_gap_m=50, simplify_m=0)


def test_remove_spikes_keeps_a_plain_ring() -> None:
    ring = np.array([(0, 0), (10, 0), (10, 10), (0, 10), (0, 0)], dtype=float)
    assert remove_spikes(ring).tolist() == ring.tolist()
