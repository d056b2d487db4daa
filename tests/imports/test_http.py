"""POST /imports and GET /imports/{id} on generated files: report, all-or-nothing, re-import."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import pytest
from fastapi.testclient import TestClient
from shapely.geometry import LineString, Polygon
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
        text("SELECT use, storeys FROM structures WHERE structure_number = 'KB-0001'")
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


def _write(frame: gpd.GeoDataFrame, tmp_path: Path, kind: str) -> Path:
    """``frame`` as a file of ``kind`` (a zipped Shapefile for ``shp``, lon/lat or WKT CSV)."""
    if kind == "shp":
        folder = tmp_path / "shp"
        folder.mkdir()
        frame.to_file(folder / "footprints.shp")
        target = tmp_path / "footprints.zip"
        with zipfile.ZipFile(target, "w") as archive:
            for side in folder.iterdir():
                archive.write(side, side.name)
        return target
    if kind == "csv-wkt":
        target = tmp_path / "footprints.csv"
        table = frame.drop(columns="geometry").assign(WKT=frame.geometry.to_wkt())
        table.to_csv(target, index=False)
        return target
    if kind == "csv-lonlat":
        target = tmp_path / "points.csv"
        centres = frame.geometry.centroid
        frame.drop(columns="geometry").assign(lon=centres.x, lat=centres.y).to_csv(
            target, index=False
        )
        return target
    suffix, driver = {
        "gpkg": (".gpkg", "GPKG"),
        "kml": (".kml", "KML"),
        "fgb": (".fgb", "FlatGeobuf"),
        "geojson": (".geojson", "GeoJSON"),
    }[kind]
    target = tmp_path / f"footprints{suffix}"
    frame.to_file(target, driver=driver)
    return target


@pytest.mark.parametrize("kind", ["geojson", "gpkg", "shp", "kml", "fgb", "csv-wkt", "csv-lonlat"])
def test_every_format_round_trips(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path, kind: str
) -> None:
    settlement = make_settlement(connection)
    frame = footprints(6)
    path = _write(frame, tmp_path, kind)
    mapping = {"fields": {"structure_number": "Structure_Number", "wall_material": "wall"}}
    if kind == "shp":  # a Shapefile cuts names to 10 characters
        mapping["fields"]["structure_number"] = "Structure_"
    response = post_import(
        client,
        path,
        token_for("mapper"),
        mapping=mapping,
        collection="structures",
        settlement_id=settlement,
    )
    assert response.status_code == 201, response.text
    assert response.json()["imported"] == 6
    rows = connection.execute(
        text(
            "SELECT structure_number, use, storeys, wall_material, GeometryType(geom) AS kind, "
            "ST_X(ST_Centroid(geom)) AS x FROM structures WHERE settlement_id = :s "
            "ORDER BY structure_number"
        ),
        {"s": settlement},
    ).all()
    assert [r.structure_number for r in rows] == list(frame["Structure_Number"])
    assert [r.use for r in rows] == [
        "residential",
        "business",
        "mixed",
        "school",
        "residential",
        "business",
    ]
    assert all(r.wall_material == "mabati" for r in rows)
    assert {r.kind for r in rows} == ({"POINT"} if kind == "csv-lonlat" else {"POLYGON"})
    expected = list(frame.geometry.centroid.x)
    assert [round(r.x, 6) for r in rows] == [round(x, 6) for x in expected]
    if kind != "kml":  # KML has no typed integers; the others keep storeys
        assert [r.storeys for r in rows] == list(frame["storeys"])


def test_bad_features_all_or_nothing_then_partial(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path
) -> None:
    settlement = make_settlement(connection)
    frame = footprints(6)
    frame.loc[1, "use"] = "palace"  # bad enum value
    frame.loc[2, "geometry"] = LineString([(36.78, -1.31), (36.781, -1.311)])  # wrong type
    frame.loc[3, "Structure_Number"] = "KB-0000"  # duplicate within the file
    frame.loc[4, "geometry"] = Polygon(
        [(36.79, -1.31), (36.7901, -1.3101), (36.7901, -1.31), (36.79, -1.3101), (36.79, -1.31)]
    )  # a bow-tie: repaired, with a warning
    path = tmp_path / "bad.geojson"
    frame.to_file(path, driver="GeoJSON")
    mapper = token_for("mapper")
    refused = post_import(client, path, mapper, collection="structures", settlement_id=settlement)
    assert refused.status_code == 422
    assert refused.headers["content-type"].startswith("application/problem+json")
    body = refused.json()
    assert (body["rejected"], body["imported"]) == (3, 0)
    reasons = {e["index"]: e["reason"] for e in body["errors"]}
    assert "use must be one of residential" in reasons[1] and "'palace'" in reasons[1]
    assert "not LINESTRING" in reasons[2]
    assert "used twice" in reasons[3] and "index 0" in reasons[3]
    assert count_rows(connection, "structures", f"settlement_id = {settlement}") == 0

    partial = post_import(
        client, path, mapper, collection="structures", settlement_id=settlement, partial=True
    )
    assert partial.status_code == 201, partial.text
    report = partial.json()
    assert (report["imported"], report["rejected"]) == (3, 3)
    assert [w["index"] for w in report["warnings"]] == [4]
    assert "repaired" in report["warnings"][0]["reason"]
    assert count_rows(connection, "structures", f"settlement_id = {settlement}") == 3


def test_duplicate_number_against_the_database(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path
) -> None:
    settlement = make_settlement(connection)
    first, second = tmp_path / "a.geojson", tmp_path / "b.geojson"
    footprints(2).to_file(first, driver="GeoJSON")
    footprints(2, y0=-1.31).to_file(second, driver="GeoJSON")  # same numbers, other places
    mapper = token_for("mapper")
    assert post_import(client, first, mapper, collection="structures").status_code == 201
    response = post_import(client, second, mapper, collection="structures")
    assert response.status_code == 422
    assert all("already used in settlement" in e["reason"] for e in response.json()["errors"])
    assert count_rows(connection, "structures", f"settlement_id = {settlement}") == 2


def test_changed_attributes_update_with_version_and_history(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path
) -> None:
    make_settlement(connection)
    frame = footprints(3)
    path = tmp_path / "with-ids.geojson"
    frame.rename(columns={"fid_src": "id"}).to_file(path, driver="GeoJSON")
    mapper = token_for("mapper", "otieno")
    assert post_import(client, path, mapper, collection="structures").json()["imported"] == 3
    frame.loc[0, "storeys"] = 3
    frame.rename(columns={"fid_src": "id"}).to_file(path, driver="GeoJSON")
    report = post_import(client, path, mapper, collection="structures").json()
    assert (report["imported"], report["updated"], report["unchanged"]) == (0, 1, 2)
    row = connection.execute(
        text("SELECT id, version, storeys FROM structures WHERE source_id = 'S0'")
    ).one()
    assert (row.version, row.storeys) == (2, 3)
    history = connection.execute(
        text(
            "SELECT action, changed_by, changes FROM feature_history "
            "WHERE collection = 'structures' AND feature_id = :id ORDER BY version"
        ),
        {"id": row.id},
    ).all()
    assert [h.action for h in history] == ["create", "update"]
    assert history[1].changed_by == "otieno"
    assert history[1].changes["storeys"] == {"from": 1, "to": 3}


def test_dry_run_shows_mapping_and_counts_and_writes_nothing(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path
) -> None:
    make_settlement(connection)
    path = tmp_path / "f.geojson"
    footprints(8).to_file(path, driver="GeoJSON")
    before = connection.execute(text("SELECT count(*) FROM imports")).scalar_one()
    response = post_import(client, path, token_for("mapper"), collection="structures", dry_run=True)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["dry_run"] is True
    assert report["mapping"]["fields"]["structure_number"] == "Structure_Number"
    assert "structure_number" in report["mapping"]["guessed"]
    assert report["counts"]["use"] == {"residential": 2, "business": 2, "mixed": 2, "school": 2}
    assert count_rows(connection, "structures", "structure_number LIKE 'KB-%'") == 0
    assert connection.execute(text("SELECT count(*) FROM imports")).scalar_one() == before


def test_several_layers_need_a_choice(
    client: TestClient, token_for: Headers, tmp_path: Path, connection: Connection
) -> None:
    make_settlement(connection)
    path = tmp_path / "two.gpkg"
    footprints(2).to_file(path, layer="blocks_a", driver="GPKG")
    footprints(3).to_file(path, layer="blocks_b", driver="GPKG")
    mapper = token_for("mapper")
    response = post_import(client, path, mapper, collection="structures")
    assert response.status_code == 400
    assert [layer["name"] for layer in response.json()["layers"]] == ["blocks_a", "blocks_b"]
    chosen = post_import(client, path, mapper, collection="structures", layer="blocks_b")
    assert chosen.json()["imported"] == 3


def test_source_crs_and_missing_prj(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path
) -> None:
    settlement = make_settlement(connection)
    frame = footprints(2).to_crs(21037)
    folder = tmp_path / "noprj"
    folder.mkdir()
    frame.to_file(folder / "utm.shp")
    (folder / "utm.prj").unlink()
    target = tmp_path / "utm.zip"
    with zipfile.ZipFile(target, "w") as archive:
        for side in folder.iterdir():
            archive.write(side, side.name)
    mapper = token_for("mapper")
    wrong = post_import(client, target, mapper, collection="structures")
    assert wrong.status_code == 422
    assert "outside longitude" in wrong.json()["errors"][0]["reason"]
    assert "no .prj" in wrong.json()["warnings"][0]["reason"]
    right = post_import(client, target, mapper, collection="structures", source_crs="EPSG:21037")
    assert right.status_code == 201, right.text
    assert count_rows(connection, "structures", f"settlement_id = {settlement}") == 2


def test_auth_and_bad_requests(client: TestClient, token_for: Headers, tmp_path: Path) -> None:
    path = tmp_path / "f.geojson"
    footprints(1).to_file(path, driver="GeoJSON")
    assert post_import(client, path, {}, collection="structures").status_code == 401
    assert (
        post_import(client, path, token_for("viewer"), collection="structures").status_code == 403
    )
    mapper = token_for("mapper")
    assert post_import(client, path, mapper, collection="traces").status_code == 400
    bad = post_import(
        client, path, mapper, collection="structures", mapping={"fields": {"colour": "x"}}
    )
    assert bad.status_code == 400 and "colour" in bad.json()["detail"]
    assert client.get("/imports/1").status_code == 401
    assert client.get("/imports/999999", headers=mapper).status_code == 404


def test_only_the_importer_or_an_admin_sees_an_import(
    client: TestClient, token_for: Headers, tmp_path: Path, connection: Connection
) -> None:
    make_settlement(connection)
    path = tmp_path / "f.geojson"
    footprints(1).to_file(path, driver="GeoJSON")
    import_id = post_import(
        client, path, token_for("mapper", "njeri"), collection="structures"
    ).json()["id"]
    assert (
        client.get(f"/imports/{import_id}", headers=token_for("mapper", "kamau")).status_code == 403
    )
    assert client.get(f"/imports/{import_id}", headers=token_for("admin")).status_code == 200


def test_idempotency_key_replays(
    client: TestClient, token_for: Headers, tmp_path: Path, connection: Connection
) -> None:
    make_settlement(connection)
    path = tmp_path / "f.geojson"
    footprints(2).to_file(path, driver="GeoJSON")
    headers = {**token_for("mapper"), "Idempotency-Key": "import-1"}
    first = post_import(client, path, headers, collection="structures")
    again = post_import(client, path, headers, collection="structures")
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json() == first.json()
    assert count_rows(connection, "structures", "structure_number LIKE 'KB-%'") == 2


def test_odd_values_are_reported_not_crashed(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path
) -> None:
    make_settlement(connection)
    frame = footprints(4)
    frame["Structure_Number"] = frame["Structure_Number"].astype(object)
    frame.loc[0, "Structure_Number"] = "KB-\x00-NUL"
    frame["storeys"] = frame["storeys"].astype(object)
    frame.loc[1, "storeys"] = "2.5"
    frame.loc[2, "storeys"] = "99999999999999999999999"
    frame.loc[3, "wall"] = "x" * 200
    path = tmp_path / "odd.geojson"
    frame.to_file(path, driver="GeoJSON")
    response = post_import(
        client,
        path,
        token_for("mapper"),
        collection="structures",
        mapping={"fields": {"wall_material": "wall"}},
        partial=True,
    )
    assert response.status_code == 201, response.text
    report = response.json()
    reasons = {e["index"]: e["reason"] for e in report["errors"]}
    assert set(reasons) == {1, 2, 3}
    assert "whole number" in reasons[1] and "whole number" in reasons[2]
    assert "longer than 100" in reasons[3]
    number = connection.execute(
        text("SELECT structure_number FROM structures WHERE import_id = :i"), {"i": report["id"]}
    ).scalar_one()
    assert number.startswith("KB-") and "\x00" not in number  # GDAL reads up to the NUL
