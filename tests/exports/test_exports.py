"""Exports: every format opens in GDAL with the right count; planner+ only; no personal data."""

from __future__ import annotations

import csv
import io
import zipfile
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


@pytest.mark.parametrize("fmt", ["geojson", "gpkg", "fgb", "shp", "kml", "csv"])
def test_formats_open_with_the_right_count(
    client: TestClient,
    token_for: Headers,
    connection: Connection,
    demo: dict[str, int],
    fmt: str,
    tmp_path: Path,
) -> None:
    settlement = connection.execute(text("SELECT min(id) FROM settlements")).scalar()
    expected = connection.execute(
        text("SELECT count(*) FROM structures WHERE settlement_id = :s AND deleted_at IS NULL"),
        {"s": settlement},
    ).scalar()
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
        assert len(rows) == expected and rows[0]["WKT"].startswith("POLYGON")
        return
    suffix = {"shp": "zip", "geojson": "geojson"}.get(fmt, fmt)
    path = tmp_path / f"export.{suffix}"
    path.write_bytes(response.content)
    if fmt == "shp":
        with zipfile.ZipFile(path) as archive:
            assert {Path(n).suffix for n in archive.namelist()} >= {".shp", ".shx", ".dbf", ".prj"}
    frame = pyogrio.read_dataframe(path)
    assert len(frame) == expected
    if fmt != "kml":
        # Shapefile truncates field names to 10 characters
        column = next(c for c in frame.columns if c.startswith("structure"))
        assert set(frame[column]) == set(
            connection.execute(
                text("SELECT structure_number FROM structures WHERE settlement_id = :s"),
                {"s": settlement},
            ).scalars()
        )


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


def test_cli_export(live_server: object, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    url = live_server.database_url  # type: ignore[attr-defined]
    out = tmp_path / "structures.fgb"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "export",
            "structures",
            "--format",
            "fgb",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MAKAZI_DATABASE_URL": url},
    )
    assert result.returncode == 0, result.stderr
    assert len(pyogrio.read_dataframe(out)) == 400
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "export",
            "structures",
            "--format",
            "dwg",
            "-o",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MAKAZI_DATABASE_URL": url},
    )
    assert bad.returncode == 1 and "dwg" in bad.stderr and not (tmp_path / "x").exists()
