"""Every format read back with GDAL: counts, ids, property names and values, geometry, CRS."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyogrio
import pytest
import shapely
from sqlalchemy import create_engine, text

from geo.exports.shapefile import long_name, short_name
from geo.layers.registry import COLLECTIONS, Collection
from tests.exports.conftest import AWKWARD_MATERIAL, AWKWARD_NUMBER, ExportServer, download

FORMATS = ["geojson", "csv", "kml", "fgb", "gpkg", "shp"]
# GDAL's LIBKML reader keeps a Placemark's own id, name and visibility in fields of those
# names, where the Data of the same names would land: move them aside
LIBKML_OWN_FIELDS = {
    "LIBKML_ID_FIELD": "kml_id",
    "LIBKML_NAME_FIELD": "kml_name",
    "LIBKML_VISIBILITY_FIELD": "kml_visibility",
}


@pytest.fixture(autouse=True)
def libkml_fields() -> Iterator[None]:
    pyogrio.set_gdal_config_options(LIBKML_OWN_FIELDS)
    yield
    pyogrio.set_gdal_config_options(dict.fromkeys(LIBKML_OWN_FIELDS))


TOLERANCE = 1e-9  # degrees: a tenth of a millimetre


def expected_rows(url: str, collection: Collection) -> dict[int, dict[str, Any]]:
    """Each live row's id, properties (as Python values) and geometry, from the database."""
    names = ", ".join(p.name for p in collection.properties)
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                f"SELECT id, {names}, ST_AsBinary(geom) AS wkb FROM {collection.table.name} "
                "WHERE deleted_at IS NULL"
            )
        ).mappings()
        found = {int(r["id"]): {**r, "geometry": shapely.from_wkb(bytes(r["wkb"]))} for r in rows}
    engine.dispose()
    return found


def as_text(value: Any) -> str | None:
    """How a value is written where the format has no type for it."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, list):
        return json.dumps(value)
    return str(value)


def same(expected: Any, got: Any) -> bool:
    """Whether a value read back is the value exported (lists compared as JSON)."""
    if got is None or (isinstance(got, float) and got != got):
        return expected is None
    if isinstance(expected, list):
        return json.loads(got) == expected if isinstance(got, str) else list(got) == expected
    if isinstance(expected, datetime):
        return str(got) == as_text(expected)
    if isinstance(expected, int | float):
        return bool(float(got) == float(expected))
    return as_text(got) == as_text(expected)


def read_back(
    path: Path, collection: Collection, fmt: str
) -> tuple[list[dict[str, Any]], list[Any], set[str | None]]:
    """The features GDAL reads from an export: property dicts, geometries, CRSs."""
    sources: list[str | Path] = [path]
    if fmt == "shp":
        with zipfile.ZipFile(path) as archive:
            layers = sorted(n for n in archive.namelist() if n.endswith(".shp"))
        sources = [f"/vsizip/{path}/{layer}" for layer in layers]
    records: list[dict[str, Any]] = []
    geometries: list[Any] = []
    crs: set[str | None] = set()
    for source in sources:
        # GeoJSON: GDAL would parse date-times to milliseconds; compare the text as written
        # CSV: GDAL reads an empty field as "" unless told it is NULL (as COPY writes it)
        options = {"geojson": {"DATE_AS_STRING": "YES"}, "csv": {"EMPTY_STRING_AS_NULL": "YES"}}
        frame = pyogrio.read_dataframe(source, **options.get(fmt, {}))
        if fmt == "shp":
            frame = frame.rename(columns={c: long_name(c) for c in frame.columns})
        records += frame.drop(columns="geometry").to_dict("records")
        geometries += list(frame.geometry)
        crs.add(pyogrio.read_info(source)["crs"])
    return records, geometries, crs


@pytest.mark.parametrize("collection_name", list(COLLECTIONS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_read_back_with_gdal(
    export_server: ExportServer, tmp_path: Path, fmt: str, collection_name: str
) -> None:
    collection = COLLECTIONS[collection_name]
    expected = expected_rows(export_server.database_url, collection)
    suffix = {"shp": "zip"}.get(fmt, fmt)
    path = download(export_server, collection_name, fmt, tmp_path / f"export.{suffix}")
    records, geometries, crs = read_back(path, collection, fmt)

    assert len(records) == len(expected)
    ids = [int(r["id"]) for r in records]
    assert sorted(ids) == sorted(expected)
    names = [p.name for p in collection.properties]
    if fmt == "kml":
        # KML has no null: an empty value is left out, so a property empty in every row
        # (review_note before anyone writes one) has no field to read back
        names = [n for n in names if any(row[n] is not None for row in expected.values())]
    assert records and set(names) <= set(records[0]) and "version" in names
    for record, geometry in zip(records, geometries, strict=True):
        row = expected[int(record["id"])]
        wrong = {n: (row[n], record[n]) for n in names if not same(row[n], record[n])}
        assert not wrong, f"{fmt} {collection_name} id {record['id']}: {wrong}"
        assert shapely.hausdorff_distance(geometry, row["geometry"]) < TOLERANCE
        assert shapely.equals(geometry, row["geometry"]) or fmt in ("csv", "kml", "geojson")
    assert crs == ({None} if fmt == "csv" else {"EPSG:4326"})


def test_geojson_is_lossless(export_server: ExportServer, tmp_path: Path) -> None:
    """Feature ids, id and version properties, microseconds, lists, coordinates to 1e-15 degrees.

    PostGIS writes at most 15 decimals: a latitude near -1.3 may lose its 17th digit.
    """
    collection = COLLECTIONS["settlements"]
    expected = expected_rows(export_server.database_url, collection)
    body = json.loads(
        download(export_server, "settlements", "geojson", tmp_path / "s.geojson").read_bytes()
    )
    for feature in body["features"]:
        row = expected[feature["id"]]
        assert feature["properties"]["id"] == feature["id"]
        assert feature["properties"]["version"] == row["version"]
        assert feature["properties"]["alt_names"] == row["alt_names"]
        assert feature["properties"]["updated_at"] == as_text(row["updated_at"])
        assert shapely.geometry.shape(feature["geometry"]).equals_exact(row["geometry"], 1e-15)
    assert any('Ki"bera & co' in f["properties"]["alt_names"] for f in body["features"])


def test_csv_keeps_nulls_apart_from_empty_text(export_server: ExportServer, tmp_path: Path) -> None:
    path = download(export_server, "structures", "csv", tmp_path / "s.csv")
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    awkward = next(r for r in rows if r["structure_number"] == AWKWARD_NUMBER)
    assert awkward["wall_material"] == AWKWARD_MATERIAL and awkward["storeys"] == ""
    assert list(rows[0])[:2] == ["id", "structure_number"] and list(rows[0])[-1] == "WKT"
    assert shapely.from_wkt(awkward["WKT"]).geom_type == "Polygon"


def test_kml_is_one_escaped_document(export_server: ExportServer, tmp_path: Path) -> None:
    from lxml import etree

    path = download(export_server, "structures", "kml", tmp_path / "s.kml")
    tree = etree.parse(str(path))
    ns = {"k": "http://www.opengis.net/kml/2.2"}
    placemarks = tree.findall("k:Document/k:Folder/k:Placemark", ns)
    assert len(placemarks) == len(
        expected_rows(export_server.database_url, COLLECTIONS["structures"])
    )
    awkward = next(p for p in placemarks if p.findtext("k:name", namespaces=ns) == AWKWARD_NUMBER)
    data = {d.get("name"): d.findtext("k:value", namespaces=ns) for d in awkward.iter("{*}Data")}
    assert data["wall_material"] == AWKWARD_MATERIAL and "storeys" not in data
    assert {"id", "version", "structure_number"} <= set(data)


def test_shapefile_names_cpg_prj(export_server: ExportServer, tmp_path: Path) -> None:
    path = download(export_server, "structures", "shp", tmp_path / "s.zip")
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == [
            f"structures.{ext}" for ext in ("cpg", "dbf", "prj", "shp", "shx")
        ]
        assert archive.read("structures.cpg").decode().strip().upper() in ("UTF-8", "UTF8")
        assert b"WGS_1984" in archive.read("structures.prj") or b"WGS 84" in archive.read(
            "structures.prj"
        )
    fields = list(pyogrio.read_info(f"/vsizip/{path}/structures.shp")["fields"])
    assert fields == [
        short_name(n) for n in ["id", *(p.name for p in COLLECTIONS["structures"].properties)]
    ]
    assert {"struct_no", "settl_id", "wall_mat", "roof_mat"} <= set(fields)
    assert all(len(f) <= 10 for f in fields)


def test_short_names_cover_every_property() -> None:
    for collection in COLLECTIONS.values():
        names = ["id", *(p.name for p in collection.properties)]
        shorts = [short_name(n) for n in names]
        assert all(len(s) <= 10 for s in shorts), collection.name
        assert len({s.lower() for s in shorts}) == len(shorts), collection.name
        assert [long_name(s) for s in shorts] == names
        assert [long_name(s.upper()) for s in shorts] == names
    with pytest.raises(KeyError, match="SHORT_NAMES"):
        short_name("a_property_name_too_long")


def test_geopackage_is_version_1_2(export_server: ExportServer, tmp_path: Path) -> None:
    path = download(export_server, "structures", "gpkg", tmp_path / "s.gpkg")
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47  # "GPKG"
        assert db.execute("PRAGMA user_version").fetchone()[0] == 10200


def test_mixed_geometries_flatgeobuf_through_gdal(
    export_server: ExportServer, tmp_path: Path
) -> None:
    """Facilities mix points and lines, which ST_AsFlatGeobuf refuses: GDAL writes them."""
    path = download(export_server, "facilities", "fgb", tmp_path / "f.fgb")
    kinds = set(pyogrio.read_dataframe(path).geom_type)
    assert {"Point", "LineString"} <= kinds


def test_flatgeobuf_from_postgis_when_it_encodes_right(
    export_server: ExportServer, tmp_path: Path
) -> None:
    """A settlement without NULLs goes through ST_AsFlatGeobuf; NULLs go where they are right."""
    from geo.exports.postgis import _encodes_nulls_right
    from geo.exports.query import ExportRows
    from geo.exports.stream import FORMATS as EXPORT_FORMATS
    from geo.exports.stream import needs_worker

    structures = COLLECTIONS["structures"]
    engine = create_engine(export_server.database_url)
    with engine.connect() as conn:
        awkward, plain = conn.execute(
            text(
                "SELECT (SELECT settlement_id FROM structures WHERE structure_number = :n), "
                "(SELECT max(settlement_id) FROM structures)"
            ),
            {"n": AWKWARD_NUMBER},
        ).one()
        assert awkward != plain
    with engine.begin() as conn:  # nobody has written a review note in the demo: write them
        conn.execute(
            text(
                "UPDATE structures SET review_note = 'read out', position_accuracy_m = 5 "
                "WHERE settlement_id = :s"
            ),
            {"s": plain},
        )
    with engine.connect() as conn:

        def worker(settlement: int) -> bool:
            return needs_worker(
                conn, ExportRows(structures, None, settlement), EXPORT_FORMATS["fgb"]
            )

        assert not worker(plain)
        right = _encodes_nulls_right(conn)
        assert worker(awkward) is not right
        if not right:  # the probe's finding is real: PostGIS shifts a value into the NULL's column
            blob = conn.execute(
                text(
                    "SELECT ST_AsFlatGeobuf(q, false, 'g') FROM (SELECT 1 AS a, "
                    "NULL::integer AS n, 7 AS z, 'POINT(1 1)'::geometry AS g) q"
                )
            ).scalar_one()
            (tmp_path / "probe.fgb").write_bytes(bytes(blob))
            read = pyogrio.read_dataframe(tmp_path / "probe.fgb")
            assert (read["n"][0], read["z"][0]) != (None, 7)
    engine.dispose()
    with httpx.stream(
        "GET",
        f"{export_server.base_url}/exports/structures",
        params={"format": "fgb", "settlement_id": plain},
        headers=export_server.headers,
        timeout=60,
    ) as response:
        (tmp_path / "plain.fgb").write_bytes(response.read())
    frame = pyogrio.read_dataframe(tmp_path / "plain.fgb")
    expected = {
        i: row
        for i, row in expected_rows(export_server.database_url, structures).items()
        if row["settlement_id"] == plain
    }
    assert sorted(frame["id"]) == sorted(expected)
    for record, geometry in zip(frame.to_dict("records"), frame.geometry, strict=True):
        row = expected[record["id"]]
        assert all(same(row[p.name], record[p.name]) for p in structures.properties)
        assert geometry.equals_exact(row["geometry"], 0)


@pytest.fixture
def empty_settlement(export_server: ExportServer) -> Iterator[int]:
    """A settlement far from every structure (an unknown id is a 404, not an empty file)."""
    engine = create_engine(export_server.database_url)
    with engine.begin() as conn:
        sid = conn.execute(
            text(
                "INSERT INTO settlements (name, geom) VALUES ('Nobody here yet', "
                "ST_Multi(ST_MakeEnvelope(37.5, -0.5, 37.51, -0.49, 4326))) RETURNING id"
            )
        ).scalar_one()
    yield int(sid)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM settlements WHERE id = :id"), {"id": sid})
    engine.dispose()


@pytest.mark.parametrize("fmt", FORMATS)
def test_nothing_to_export_is_an_empty_file(
    export_server: ExportServer, empty_settlement: int, tmp_path: Path, fmt: str
) -> None:
    response = httpx.get(
        f"{export_server.base_url}/exports/structures",
        params={"format": fmt, "settlement_id": empty_settlement},
        headers=export_server.headers,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    path = tmp_path / f"empty.{'zip' if fmt == 'shp' else fmt}"
    path.write_bytes(response.content)
    if fmt == "csv":
        assert response.text.splitlines() == [response.text.splitlines()[0]]
        assert response.text.startswith("id,structure_number,")
        return
    source = f"/vsizip/{path}/structures.shp" if fmt == "shp" else path
    assert len(pyogrio.read_dataframe(source)) == 0
    if fmt not in ("geojson", "kml"):  # no features: GDAL cannot tell their fields
        assert "id" in list(pyogrio.read_info(source)["fields"])


@pytest.mark.parametrize("fmt", ["geojson", "csv", "gpkg"])
def test_settlements_carry_their_profile(
    export_server: ExportServer, tmp_path: Path, fmt: str
) -> None:
    """A settlement's reported profile fields travel with it, in every format."""
    engine = create_engine(export_server.database_url)
    with engine.connect() as conn:
        settlement = conn.execute(text("SELECT min(id) FROM settlements")).scalar_one()
        stored = conn.execute(
            text("SELECT fields FROM settlement_profiles WHERE settlement_id = :s"),
            {"s": settlement},
        ).scalar()
    engine.dispose()
    if stored is None:
        written = httpx.put(
            f"{export_server.base_url}/settlements/{settlement}/profile",
            json={"fields": {"population_reported": 41_000, "forum_date": "2026-03-14"}},
            headers={**export_server.headers, "If-Match": '"0"'},
            timeout=60,
        )
        assert written.status_code == 200, written.text
    path = download(export_server, "settlements", fmt, tmp_path / f"settlements.{fmt}")
    records, _geometries, _crs = read_back(path, COLLECTIONS["settlements"], fmt)
    by_id = {int(r["id"]): r for r in records}
    profile = json.loads(by_id[settlement]["profile"])
    assert profile["population_reported"] == 41_000
    assert profile["forum_date"] == "2026-03-14"
    others = [r["profile"] for i, r in by_id.items() if i != settlement]
    assert all(not isinstance(p, str) or p == "" for p in others)  # null (None or NaN)


def test_an_exported_shapefile_maps_back_field_for_field(
    export_server: ExportServer, tmp_path: Path
) -> None:
    """Import's guesses read Makazi's own 10-character Shapefile names back (a dry run)."""
    path = download(export_server, "structures", "shp", tmp_path / "structures.zip")
    with zipfile.ZipFile(path) as archive:
        layers = sorted(n for n in archive.namelist() if n.endswith(".shp"))
    answer = httpx.post(
        f"{export_server.base_url}/imports",
        files={"file": ("structures.zip", path.read_bytes(), "application/zip")},
        data={"collection": "structures", "dry_run": "true", "layer": layers[0][:-4]},
        headers=export_server.headers,
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    fields = answer.json()["mapping"]["fields"]
    for prop in COLLECTIONS["structures"].properties:
        if prop.writable:
            assert fields.get(prop.name) == short_name(prop.name), (prop.name, fields)


WAYPOINT_ONLY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<gpx version="1.1" creator="test" xmlns="http://www.topografix.com/GPX/1/1">'
    b'<wpt lat="-1.3101" lon="36.7902"><name>tap 4</name></wpt></gpx>'
)


def upload_waypoints_only(client: Any, token_for: Any) -> int:
    """A public trace of one waypoint (no line geometry); its id."""
    answer = client.post(
        "/traces",
        content=WAYPOINT_ONLY,
        params={"visibility": "public", "name": "taps"},
        headers={**token_for("mapper"), "Content-Type": "application/gpx+xml"},
    )
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


@pytest.mark.parametrize("fmt", ["gpkg", "fgb", "shp"])
def test_a_trace_without_lines_is_kept_by_gdal_formats(
    client: Any, connection: Any, token_for: Any, tmp_path: Path, fmt: str
) -> None:
    """A trace of waypoints only has no line geometry: it is exported without one, not lost."""
    from geo.exports.gdal import write_file
    from geo.exports.postgis import flatgeobuf_safe
    from geo.exports.query import ExportRows

    trace = upload_waypoints_only(client, token_for)
    lines = text("SELECT geom IS NULL FROM traces WHERE id = :i")
    assert connection.execute(lines, {"i": trace}).scalar_one()

    rows = ExportRows(COLLECTIONS["traces"], None)
    if fmt == "fgb":  # ST_AsFlatGeobuf's index would write it as a geometry GDAL cannot read
        assert not flatgeobuf_safe(connection, rows)
    path = write_file(connection, rows, fmt, tmp_path)
    source = f"/vsizip/{path}/traces.shp" if fmt == "shp" else str(path)
    frame = pyogrio.read_dataframe(source)
    kept = frame[frame["id"] == trace]
    assert len(kept) == 1
    assert kept.geometry.iloc[0] is None


@pytest.mark.parametrize("fmt", ["geojson", "csv", "kml"])
def test_a_trace_without_lines_exports_through_http(
    client: Any, token_for: Any, tmp_path: Path, fmt: str
) -> None:
    """The formats PostGIS builds answer with the trace of waypoints only among their features
    (GDAL's are written by a worker on its own connection, outside this test's transaction:
    the test before calls their writer directly)."""
    trace = upload_waypoints_only(client, token_for)
    exported = client.get(
        "/exports/traces", params={"format": fmt}, headers=token_for("planner", "planner-p")
    )
    assert exported.status_code == 200, exported.text
    path = tmp_path / f"traces.{fmt}"
    path.write_bytes(exported.content)
    ids = [int(i) for i in pyogrio.read_dataframe(path)["id"]]
    assert trace in ids
