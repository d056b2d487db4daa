"""Real Nairobi data (../shared/samples/geo/kenya) into settlements and facilities, with mappings.

Messy as it is: unnamed village polygons, duplicate names, EPSG:3857 with an old
``crs`` member, 3D KMZ outlines, CSV with lat/lon or WKT MultiPoints, OSM tags.
Everything that lands must land in Nairobi, and a second run adds nothing.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, text

from tests.imports.helpers import count_rows, post_import
from tests.support.samples import SAMPLES

Headers = Callable[..., dict[str, str]]
KENYA = SAMPLES / "geo" / "kenya"
pytestmark = pytest.mark.skipif(
    not KENYA.exists(), reason="../shared/samples is not beside the checkout"
)
#: Nairobi, generously (lon/lat).
NAIROBI = (36.6, -1.45, 37.1, -1.15)

FACILITY_TYPES = {
    "water_point": "water_point",
    "drinking_water": "water_point",
    "toilets": "toilet_block",
    "school": "school",
    "kindergarten": "school",
    "clinic": "clinic",
    "hospital": "clinic",
    "*": "other",
}


def _zipped(name: str, tmp_path: Path) -> Path:
    target = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(target, "w") as archive:
        for side in KENYA.glob(f"{name}.*"):
            archive.write(side, side.name)
    return target


def _outside_nairobi(connection: Connection, table: str, import_id: int) -> int:
    return int(
        connection.execute(
            text(
                f"SELECT count(*) FROM {table} WHERE import_id = :i AND NOT ST_Within(geom, "
                "ST_MakeEnvelope(:x0, :y0, :x1, :y1, 4326))"
            ),
            {
                "i": import_id,
                "x0": NAIROBI[0],
                "y0": NAIROBI[1],
                "x1": NAIROBI[2],
                "y1": NAIROBI[3],
            },
        ).scalar_one()
    )


def _import(
    client: TestClient, path: Path, headers: dict[str, str], mapping: dict[str, Any], **fields: Any
) -> dict[str, Any]:
    response = post_import(client, path, headers, mapping=mapping, **fields)
    assert response.status_code == 201, response.text
    report: dict[str, Any] = response.json()
    return report


def test_village_boundaries_into_settlements(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path
) -> None:
    mapper = token_for("mapper")
    mapping = {"fields": {"name": "name"}, "defaults": {"source": "Map Kibera (OSM)"}}
    path = _zipped("kiberatb__Boundary", tmp_path)
    refused = post_import(client, path, mapper, mapping=mapping, collection="settlements")
    assert refused.status_code == 422  # some village polygons have no name
    body = refused.json()
    assert body["rejected"] > 0 and body["imported"] == 0
    assert all("name is required" in e["reason"] for e in body["errors"])
    assert count_rows(connection, "settlements", "source = 'Map Kibera (OSM)'") == 0

    report = _import(client, path, mapper, mapping, collection="settlements", partial=True)
    assert report["imported"] + report["rejected"] == 22
    assert report["imported"] == count_rows(
        connection, "settlements", "source = 'Map Kibera (OSM)'"
    )
    assert _outside_nairobi(connection, "settlements", report["id"]) == 0

    again = _import(client, path, mapper, mapping, collection="settlements", partial=True)
    assert (again["imported"], again["unchanged"]) == (0, report["imported"])


def test_mukuru_and_kibera_outlines(
    client: TestClient, token_for: Headers, connection: Connection
) -> None:
    mapper = token_for("mapper")
    mukuru = _import(
        client,
        KENYA / "kisip__mukuru.geojson",
        mapper,
        {"defaults": {"county": "Nairobi"}},
        collection="settlements",
    )
    assert mukuru["imported"] == 4
    outline = _import(
        client,
        KENYA / "lcspatial__Kibera_Boundary.kmz",
        mapper,
        {"defaults": {"name": "Kibera"}},
        collection="settlements",
    )
    assert outline["imported"] == 1  # a 3D MultiPolygon in a KMZ
    for report in (mukuru, outline):
        assert _outside_nairobi(connection, "settlements", report["id"]) == 0
    names = (
        connection.execute(
            text("SELECT name FROM settlements WHERE import_id = :i ORDER BY name"),
            {"i": mukuru["id"]},
        )
        .scalars()
        .all()
    )
    assert all(names)


def test_wash_survey_into_facilities(
    client: TestClient, token_for: Headers, connection: Connection
) -> None:
    mapping = {
        "fields": {"type": "amenity"},
        "values": {"type": FACILITY_TYPES, "condition": {"good": "working", "*": "needs_repair"}},
    }
    path = KENYA / "mapkibera-watsan__features-osm.geojson"
    report = _import(client, path, token_for("mapper"), mapping, collection="facilities")
    assert report["imported"] == 792
    by_type = dict(
        connection.execute(
            text("SELECT type, count(*) FROM facilities WHERE import_id = :i GROUP BY 1"),
            {"i": report["id"]},
        ).all()
    )
    assert by_type["water_point"] > 500
    assert _outside_nairobi(connection, "facilities", report["id"]) == 0


def test_web_mercator_survey_with_old_crs_member(
    client: TestClient, token_for: Headers, connection: Connection
) -> None:
    mapping = {
        "fields": {"type": "FacilityTy", "name": "FacilityNa"},
        "values": {"type": {"*": "water_point"}},
    }
    report = _import(
        client,
        KENYA / "lcspatial__Water_Points.geojson",
        token_for("mapper"),
        mapping,
        collection="facilities",
    )
    assert report["imported"] == 72
    assert _outside_nairobi(connection, "facilities", report["id"]) == 0


@pytest.mark.parametrize(
    ("relative", "mapping", "features"),
    [
        (
            "openschoolske__kibera-primary-schools/kibera-primary-schools.csv",
            {"fields": {"name": "official_name"}, "defaults": {"type": "school"}},
            125,
        ),
        ("openschoolske__kibera-schools.csv", {"defaults": {"type": "school"}}, 356),
        ("openschoolske__mathare-schools-osm.geojson", {"defaults": {"type": "school"}}, 59),
    ],
)
def test_schools_from_csv_and_geojson(
    client: TestClient,
    token_for: Headers,
    connection: Connection,
    relative: str,
    mapping: dict[str, Any],
    features: int,
) -> None:
    report = _import(
        client, KENYA / relative, token_for("mapper"), mapping, collection="facilities"
    )
    assert report["imported"] + report["rejected"] == features
    assert report["imported"] > 0
    assert _outside_nairobi(connection, "facilities", report["id"]) == 0
