"""Form exports into structures and households: ODK Central CSV zips and KoboToolbox XLSX."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Connection, text

from tests.imports.helpers import KIBERA, count_rows, make_settlement, post_import
from tests.support.odk import FORM, households_of, shape, submission, write_export

Headers = Callable[..., dict[str, str]]


def _submissions(use_of_first: str = "residential") -> list[dict[str, Any]]:
    x, y = KIBERA
    key = "uuid:0000000{}-aaaa-bbbb-cccc-000000000000".format
    return [
        submission(
            key(0), "E-001", use_of_first, point=(x + 0.00002, y + 0.00002), footprint=shape(x, y)
        ),
        submission(key(1), "E-002", "business", point=(x + 0.001, y)),
        submission(key(2), "E-003", "residential", point=(x + 0.002, y), review="rejected"),
        submission(key(3), "E-004", "mixed", point=None),
    ]


def _export(tmp_path: Path, rows: list[dict[str, Any]], name: str = "export.zip") -> Path:
    households = (household for row in rows for household in households_of(row["KEY"]))
    return write_export(tmp_path / name, rows, households)


def test_odk_export_into_structures(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path
) -> None:
    settlement = make_settlement(connection)
    mapper = token_for("mapper")
    path = _export(tmp_path, _submissions())
    dry = post_import(client, path, mapper, collection="structures", dry_run=True).json()
    assert dry["mapping"]["fields"]["structure_number"] == "structure-structure_number"
    assert dry["mapping"]["fields"]["use"] == "structure-use"
    assert dry["skipped"] == 1

    response = post_import(client, path, mapper, collection="structures", partial=True)
    assert response.status_code == 201, response.text
    report = response.json()
    assert (report["imported"], report["rejected"], report["skipped"]) == (2, 1, 1)
    assert report["errors"][0]["index"] == 3
    assert report["errors"][0]["source_id"].startswith("uuid:00000003")
    assert "geometry is missing" in report["errors"][0]["reason"]
    rows = connection.execute(
        text(
            "SELECT structure_number, GeometryType(geom) AS kind, ST_X(ST_Centroid(geom)) AS x, "
            "ST_Y(ST_Centroid(geom)) AS y, source_id FROM structures WHERE settlement_id = :s "
            "ORDER BY structure_number"
        ),
        {"s": settlement},
    ).all()
    assert [(r.structure_number, r.kind) for r in rows] == [
        ("E-001", "POLYGON"),
        ("E-002", "POINT"),
    ]
    assert abs(rows[0].x - KIBERA[0]) < 0.001 and abs(rows[0].y - KIBERA[1]) < 0.001  # lat first
    assert rows[0].source_id == "uuid:00000000-aaaa-bbbb-cccc-000000000000"

    again = post_import(client, path, mapper, collection="structures", partial=True).json()
    assert (again["imported"], again["unchanged"]) == (0, 2)
    edited = _export(tmp_path, _submissions(use_of_first="school"), "edited.zip")
    changed = post_import(client, edited, mapper, collection="structures", partial=True).json()
    assert (changed["imported"], changed["updated"], changed["unchanged"]) == (0, 1, 1)
    version = connection.execute(
        text("SELECT version, use FROM structures WHERE structure_number = 'E-001'")
    ).one()
    assert tuple(version) == (2, "school")
    assert count_rows(connection, "structures", f"settlement_id = {settlement}") == 2


def test_geometry_column_chosen_by_the_mapping(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path
) -> None:
    make_settlement(connection)
    path = _export(tmp_path, _submissions()[:2])
    response = post_import(
        client,
        path,
        token_for("mapper"),
        collection="structures",
        mapping={"geometry": "location"},
    )
    assert response.status_code == 201, response.text
    kinds = (
        connection.execute(
            text("SELECT DISTINCT GeometryType(geom) FROM structures WHERE import_id = :i"),
            {"i": response.json()["id"]},
        )
        .scalars()
        .all()
    )
    assert kinds == ["POINT"]
    wrong = post_import(
        client, path, token_for("mapper"), collection="structures", mapping={"geometry": "gps"}
    )
    assert wrong.status_code == 400 and "gps" in wrong.json()["detail"]


def test_households_from_the_repeat_group(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path
) -> None:
    make_settlement(connection)
    path = _export(tmp_path, _submissions())
    mapping = {"households": {"repeat": "households", "defaults": {"tenure": "other"}}}
    fields = {"collection": "structures", "partial": True}
    denied = post_import(client, path, token_for("mapper"), mapping=mapping, **fields)
    assert denied.status_code == 403 and "enumerator" in denied.json()["detail"]

    enumerator = token_for("enumerator")
    dry = post_import(client, path, enumerator, mapping=mapping, dry_run=True, **fields).json()
    assert dry["households"]["imported"] == 2
    assert count_rows(connection, "households") == 0

    response = post_import(client, path, enumerator, mapping=mapping, **fields)
    assert response.status_code == 201, response.text
    report = response.json()
    assert (report["imported"], report["skipped"]) == (2, 1)
    part = report["households"]
    # E-003 was rejected in review: its household is skipped with it; E-004 had no geometry.
    assert (part["imported"], part["rejected"]) == (2, 1)
    assert "not among the structures imported" in part["errors"][0]["reason"]
    rows = connection.execute(
        text(
            "SELECT s.structure_number, h.members, h.tenure, h.head_name, s.households "
            "FROM households h JOIN structures s ON s.id = h.structure_id ORDER BY 1"
        )
    ).all()
    assert [tuple(r) for r in rows] == [
        ("E-001", 4, "tenant", "Amina", 1),
        ("E-002", 4, "tenant", "Amina", 1),
    ]

    again = post_import(client, path, enumerator, mapping=mapping, **fields).json()
    assert (again["households"]["imported"], again["households"]["unchanged"]) == (0, 2)
    assert count_rows(connection, "households") == 2


def test_households_all_or_nothing(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path
) -> None:
    make_settlement(connection)
    path = _export(tmp_path, _submissions()[:2])
    mapping = {"households": {"repeat": "households", "values": {"tenure": {"tenant": "lodger"}}}}
    refused = post_import(
        client, path, token_for("enumerator"), collection="structures", mapping=mapping
    )
    assert refused.status_code == 422
    body = refused.json()
    assert body["households"]["rejected"] == 2
    assert "tenure must be one of" in body["households"]["errors"][0]["reason"]
    assert count_rows(connection, "structures", "structure_number LIKE 'E-%'") == 0
    assert count_rows(connection, "households") == 0
    missing = post_import(
        client,
        path,
        token_for("enumerator"),
        collection="structures",
        mapping={"households": {"repeat": "members"}},
    )
    assert missing.status_code == 400 and "households" in missing.json()["detail"]


def test_nul_bytes_never_reach_the_database(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path
) -> None:
    make_settlement(connection)
    x, y = KIBERA
    target = tmp_path / "nul.zip"
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr(
            f"{FORM}.csv",
            "KEY,structure-structure_number,location-Latitude,location-Longitude\n"
            f"uuid:\x001,N\x00-1,{y},{x}\n",
        )
        archive.writestr(f"{FORM}-households.csv", "PARENT_KEY,KEY\n")
    response = post_import(client, target, token_for("mapper"), collection="structures")
    assert response.status_code == 201, response.text
    row = connection.execute(
        text("SELECT source_id, structure_number FROM structures WHERE import_id = :i"),
        {"i": response.json()["id"]},
    ).one()
    assert tuple(row) == ("uuid:1", "N-1")


def _kobo(tmp_path: Path, rows: list[dict[str, Any]]) -> Path:
    """The submissions as a KoboToolbox XLSX export (groups with '/', geopoint helpers)."""
    import pandas as pd
    import pyogrio

    main = pd.DataFrame(
        {
            "structure/structure_number": [r["structure-structure_number"] for r in rows],
            "structure/use": [r["structure-use"] for r in rows],
            "footprint": [r["footprint"] for r in rows],
            "_location_latitude": [r["location-Latitude"] for r in rows],
            "_location_longitude": [r["location-Longitude"] for r in rows],
            "_uuid": [r["KEY"].removeprefix("uuid:") for r in rows],
            "_index": [str(i + 1) for i in range(len(rows))],
            "_validation_status": [
                "validation_status_not_approved" if r["ReviewState"] == "rejected" else ""
                for r in rows
            ],
        }
    )
    repeat = pd.DataFrame(
        {
            "head_name": ["Amina", "Baraka", "Chebet"],
            "members": ["4", "2", "6"],
            "tenure": ["tenant", "owner", "tenant"],
            "_index": ["1", "2", "3"],
            "_parent_index": ["1", "1", "2"],
            "_parent_table_name": ["structure_survey"] * 3,
        }
    )
    target = tmp_path / "kobo.xlsx"
    pyogrio.write_dataframe(main, target, layer="structure_survey", driver="XLSX")
    pyogrio.write_dataframe(repeat, target, layer="households", driver="XLSX", append=True)
    return target


def test_kobo_xlsx_export(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path
) -> None:
    make_settlement(connection)
    path = _kobo(tmp_path, _submissions())
    mapping = {"households": {"repeat": "households"}}
    response = post_import(
        client,
        path,
        token_for("enumerator"),
        collection="structures",
        partial=True,
        mapping=mapping,
    )
    assert response.status_code == 201, response.text
    report = response.json()
    assert (report["imported"], report["rejected"], report["skipped"]) == (2, 1, 1)
    assert report["households"]["imported"] == 3, report["households"]
    rows = connection.execute(
        text(
            "SELECT s.structure_number, s.use, GeometryType(s.geom) AS kind, count(h.id) AS n "
            "FROM structures s LEFT JOIN households h ON h.structure_id = s.id "
            "WHERE s.import_id = :i GROUP BY 1, 2, 3 ORDER BY 1"
        ),
        {"i": report["id"]},
    ).all()
    assert [tuple(r) for r in rows] == [
        ("E-001", "residential", "POLYGON", 2),
        ("E-002", "business", "POINT", 1),
    ]
    keys = (
        connection.execute(text("SELECT source_id FROM households ORDER BY source_id"))
        .scalars()
        .all()
    )
    assert keys[0].endswith("/households[1]") and keys[1].endswith("/households[2]")
    again = post_import(
        client,
        path,
        token_for("enumerator"),
        collection="structures",
        partial=True,
        mapping=mapping,
    ).json()
    assert (again["unchanged"], again["households"]["unchanged"]) == (2, 3)


def test_kobo_workbook_with_entities_is_refused(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path
) -> None:
    source = _kobo(tmp_path, _submissions())
    target = tmp_path / "evil.xlsx"
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as evil:
        for info in original.infolist():
            data = original.read(info)
            if info.filename == "xl/worksheets/sheet1.xml":
                data = data.replace(b"?>", b'?><!DOCTYPE x [<!ENTITY a "aaaa">]>', 1)
            evil.writestr(info, data)
    response = post_import(client, target, token_for("mapper"), collection="structures")
    assert response.status_code == 400
    assert "ENTITY" in response.json()["detail"]
    assert count_rows(connection, "structures", "structure_number LIKE 'E-%'") == 0
