"""Hostile uploads: each gets a clear 4xx problem and nothing is written."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, text

from geo.core.settings import Settings
from tests.imports.helpers import footprints, post_import

Headers = Callable[..., dict[str, str]]


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    """Small limits, so the bombs go off quickly."""
    return settings.model_copy(
        update={"max_upload_mb": 3, "max_decompressed_mb": 5, "import_max_line_kb": 64}
    )


def _written(connection: Connection) -> int:
    return int(
        connection.execute(
            text("SELECT (SELECT count(*) FROM structures) + (SELECT count(*) FROM imports)")
        ).scalar_one()
    )


def _refused(response: object, status: int, needle: str) -> None:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert response.headers["content-type"].startswith("application/problem+json")  # type: ignore[attr-defined]
    assert needle in body["detail"], body["detail"]


def test_zip_bomb(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path
) -> None:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb.geojson", b" " * (50 * 1024 * 1024))
    assert path.stat().st_size < 1024 * 1024
    before = _written(connection)
    _refused(
        post_import(client, path, token_for("mapper"), collection="structures"), 413, "decompressed"
    )
    assert _written(connection) == before


def test_path_traversal(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path
) -> None:
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("../../evil.geojson", b'{"type": "FeatureCollection", "features": []}')
    before = _written(connection)
    _refused(
        post_import(client, path, token_for("mapper"), collection="structures"),
        400,
        "path traversal",
    )
    assert _written(connection) == before
    assert not (tmp_path.parent / "evil.geojson").exists()


def test_geopackage_that_is_not_sqlite(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path
) -> None:
    path = tmp_path / "fake.gpkg"
    path.write_bytes(b"PK-not-really\x00\x01" * 100)
    before = _written(connection)
    _refused(
        post_import(client, path, token_for("mapper"), collection="structures"),
        400,
        "not an SQLite",
    )
    assert _written(connection) == before


def test_very_long_csv_line(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path
) -> None:
    path = tmp_path / "long.csv"
    path.write_bytes(b"name,WKT\n" + b"x" * (2 * 1024 * 1024) + b",POINT (36.8 -1.3)\n")
    before = _written(connection)
    _refused(post_import(client, path, token_for("mapper"), collection="structures"), 413, "line 2")
    assert _written(connection) == before


@pytest.mark.parametrize(
    "declaration",
    [b'<!DOCTYPE kml [<!ENTITY a "aaaaaaaaaa">]>', b"<!ENTITY x SYSTEM 'file:///etc/passwd'>"],
)
def test_xml_entities_in_kml(
    client: TestClient,
    token_for: Headers,
    connection: Connection,
    tmp_path: Path,
    declaration: bytes,
) -> None:
    body = (
        b'<?xml version="1.0"?>' + declaration + b'<kml xmlns="http://www.opengis.net/kml/2.2">'
        b"<Placemark><name>&a;</name><Point><coordinates>36.8,-1.3</coordinates></Point>"
        b"</Placemark></kml>"
    )
    for name, data in (("bomb.kml", body), ("bomb.kmz", _kmz(body))):
        path = tmp_path / name
        path.write_bytes(data)
        before = _written(connection)
        _refused(
            post_import(client, path, token_for("mapper"), collection="structures"), 400, "ENTITY"
        )
        assert _written(connection) == before


def _kmz(kml: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("doc.kml", kml)
    return buffer.getvalue()


def test_upload_over_the_limit_is_413(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path
) -> None:
    path = tmp_path / "big.geojson"
    path.write_bytes(b" " * (4 * 1024 * 1024))
    before = _written(connection)
    _refused(post_import(client, path, token_for("mapper"), collection="structures"), 413, "3 MB")
    assert _written(connection) == before


def test_not_a_format_we_read(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path
) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4)
    _refused(
        post_import(client, path, token_for("mapper"), collection="structures"), 415, "not a format"
    )
    path = tmp_path / "ok.geojson"
    footprints(1).to_file(path, driver="GeoJSON")
    with path.open("rb") as handle:
        raw = client.post(
            "/imports",
            content=handle.read(),
            headers={**token_for("mapper"), "Content-Type": "application/geo+json"},
        )
    assert raw.status_code == 415
