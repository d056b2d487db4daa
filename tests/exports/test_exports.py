"""Exports through the app: one settlement, planner+ only, no personal data, clear errors."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import pyogrio
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, text

from geo.demo.generator import generate
from geo.demo.loader import load

Headers = Callable[..., dict[str, str]]


@pytest.fixture
def demo(connection: Connection) -> dict[str, int]:
    return load(connection, generate(300, seed=4))


@pytest.mark.parametrize("fmt", ["geojson", "kml", "csv"])
def test_one_settlement_and_no_personal_data(
    client: TestClient,
    token_for: Headers,
    connection: Connection,
    demo: dict[str, int],
    fmt: str,
    tmp_path: Path,
) -> None:
    """Formats PostGIS builds read the request's own transaction (GDAL's: test_formats.py)."""
    settlement = connection.execute(text("SELECT min(id) FROM settlements")).scalar()
    expected = set(
        connection.execute(
            text("SELECT id FROM structures WHERE settlement_id = :s AND deleted_at IS NULL"),
            {"s": settlement},
        ).scalars()
    )
    response = client.get(
        "/exports/structures",
        params={"format": fmt, "settlement_id": settlement},
        headers=token_for("planner"),
    )
    assert response.status_code == 200, response.text
    assert "attachment" in response.headers["content-disposition"]
    assert b"head_name" not in response.content and b"phone" not in response.content
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert {int(r["id"]) for r in rows} == expected and rows[0]["WKT"].startswith("POLYGON")
        return
    path = tmp_path / f"export.{fmt}"
    path.write_bytes(response.content)
    frame = pyogrio.read_dataframe(path)
    assert {int(i) for i in frame["id"]} == expected


def test_whole_layer_geojson(client: TestClient, token_for: Headers, demo: dict[str, int]) -> None:
    body = client.get("/exports/structures", headers=token_for("admin")).json()
    assert len(body["features"]) == 300


def test_exports_need_planner(client: TestClient, token_for: Headers) -> None:
    assert client.get("/exports/structures").status_code == 401
    assert client.get("/exports/structures", headers=token_for("enumerator")).status_code == 403


def test_bad_export_requests(client: TestClient, token_for: Headers) -> None:
    planner = token_for("planner")
    bad = client.get("/exports/structures", params={"format": "dwg"}, headers=planner)
    assert bad.status_code == 400 and "dwg" in bad.json()["detail"]
    assert client.get("/exports/households", headers=planner).status_code == 404


def test_unknown_settlement_is_404(client: TestClient, token_for: Headers) -> None:
    # as everywhere else a settlement_id names a settlement: an empty file would hide the typo
    response = client.get(
        "/exports/structures",
        params={"format": "csv", "settlement_id": 987654},
        headers=token_for("planner"),
    )
    assert response.status_code == 404, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "settlement_id: no settlement 987654" in response.json()["detail"]
