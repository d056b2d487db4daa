"""POST /imports and GET /imports/{id} on generated files: report, all-or-nothing, re-import."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import Connection, text

from tests.imports.helpers import count_rows, footprints, make_settlement, post_import

Headers = Callable[..., dict[str, str]]


def test_geojson_structures_import_and_reimport(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path
) -> None:
    settlement = make_settlement(connection)
    path = tmp_path / "footprints.geojson"
    footprints(5).to_file(path, driver="GeoJSON")
    mapper = token_for("mapper", "amina")
    response = post_import(client, path, mapper, collection="structures")
    assert response.status_code == 201, response.text
    report = response.json()
    assert (report["imported"], report["rejected"], report["errors"]) == (5, 0, [])
    assert response.headers["location"].endswith(f"/imports/{report['id']}")
    assert count_rows(connection, "structures", f"settlement_id = {settlement}") == 5
    row = connection.execute(
        text("SELECT use, storeys, structure_number FROM structures WHERE structure_number = 'KB-0001'")
    ).one()
    assert (row.use, row.storeys) == ("business", 2)  # 'Business' matched case-insensitively

    again = post_import(client, path, mapper, collection="structures")
    assert again.status_code == 201, again.text
    assert (again.json()["imported"], again.json()["unchanged"]) == (0, 5)
    assert count_rows(connection, "structures", f"settlement_id = {settlement}") == 5

    status = client.get(f"/imports/{report['id']}", headers=mapper)
    assert status.status_code == 200
    assert status.json()["status"] == "done"
    assert status.json()["report"]["imported"] == 5
