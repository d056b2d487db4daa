"""SQL through an import: hostile mappings and hostile column names are refused or kept as data.

The mapping's keys and values, the file's own column names, a source id column
and the layer name all reach the import's statements; SQL in any of them must
give a 4xx (naming the field) or be stored as plain text, and the tables stay
as they were (no table dropped, no row changed behind the import's back).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, text

from tests.imports.helpers import footprints, make_settlement, post_import

Headers = Callable[..., dict[str, str]]

PROBES = [
    "x'; DROP TABLE structures; --",
    'x"; DROP TABLE structures; --',
    "storeys) VALUES (1); DELETE FROM settlements; --",
    "1 OR 1=1",
    "$$; SELECT pg_sleep(10); $$",
]


def _state(connection: Connection) -> tuple[Any, ...]:
    return tuple(
        connection.execute(
            text(
                "SELECT (SELECT count(*) FROM settlements), (SELECT count(*) FROM api_tokens), "
                "to_regclass('structures') IS NOT NULL, to_regclass('settlements') IS NOT NULL"
            )
        ).one()
    )


def _answer_is_safe(response: Any) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json")
    assert "Traceback" not in response.text and "psycopg" not in response.text


@pytest.mark.parametrize("probe", PROBES)
def test_hostile_column_names_and_mappings(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path, probe: str
) -> None:
    make_settlement(connection)
    frame = footprints(3)
    frame[probe] = ["a", "b", "c"]  # a column whose name is SQL
    path = tmp_path / "hostile.geojson"
    frame.to_file(path, driver="GeoJSON")
    headers = token_for("mapper")
    before = _state(connection)
    attempts = [
        {"fields": {"wall_material": probe}},  # a mapped column named with SQL
        {"fields": {probe: "wall"}},  # SQL as one of our field names
        {"values": {"use": {probe: "residential", "*": "residential"}}},
        {"defaults": {"roof_material": probe}},  # SQL as a value: stored as text
        {"source_id": probe},
    ]
    for mapping in attempts:
        response = post_import(
            client, path, headers, collection="structures", mapping=mapping, dry_run=True
        )
        _answer_is_safe(response)
    # an import that writes: the hostile column mapped to a real field keeps its values as data
    written = post_import(
        client,
        path,
        headers,
        collection="structures",
        mapping={"fields": {"wall_material": probe}, "defaults": {"roof_material": probe}},
    )
    _answer_is_safe(written)
    assert written.status_code == 201, written.text
    stored = connection.execute(
        text(
            "SELECT wall_material, roof_material FROM structures "
            "WHERE structure_number LIKE 'KB-%' ORDER BY structure_number"
        )
    ).all()
    assert [tuple(row) for row in stored] == [("a", probe), ("b", probe), ("c", probe)]
    # the layer name goes to GDAL: SQL there is an unknown layer, a 400
    layer = post_import(client, path, headers, collection="structures", layer=probe)
    _answer_is_safe(layer)
    assert layer.status_code == 400
    assert _state(connection) == before
