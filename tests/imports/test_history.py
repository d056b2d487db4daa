"""The bulk merge's own history rows are the audit trigger's, field for field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, text

from geo.core.db import act_as
from geo.imports.history import insert_audited
from tests.imports.helpers import KIBERA, footprints, make_settlement, post_import

Headers = Callable[..., dict[str, str]]

#: The same rows written twice: once through the trigger, once by insert_audited.
ROWS = {
    "settlements": (
        "name, alt_names, county, geom",
        "'Kibera « Soweto » & <Laini Saba>', ARRAY['Kibra', 'ምስራቅ'], NULL, "
        "ST_Multi(ST_GeomFromText('POLYGON((36.7 -1.3, 36.71 -1.3, 36.71 -1.31, 36.7 -1.3))',"
        " 4326))",
    ),
    "structures": (
        "structure_number, use, storeys, position_accuracy_m, review_note, geom, source_id",
        "'KB-ü-1', 'residential', NULL, 2.25, '<b>a&amp;b</b>', "
        "ST_GeomFromText('POLYGON((36.123456789012345 -1.3, 36.2 -1.3, 36.2 -1.2, "
        "36.123456789012345 -1.3))', 4326), 'src-{n}'",
    ),
    "facilities": (
        "type, name, geom",
        "'water_point', 'Kiosk \"Maji\"', ST_GeomFromText('POINT(36.78 -1.315)', 4326)",
    ),
    "households": (
        "structure_id, head_name, members, phone, source_id",
        "(SELECT max(id) FROM structures), 'Wanjiku «Mama» & co', 5, NULL, 'uuid:x/h[{n}]'",
    ),
}
FROM_TRIGGER_SQL = text(
    """
    SELECT h.action, h.version, h.changed_by, h.changes IS NULL AS derived,
           makazi_history_changes(h.changes, h.snapshot) - 'id' - 'source_id' AS changes,
           h.snapshot - 'id' - 'source_id' - 'created_at' - 'updated_at' AS snapshot
    FROM feature_history h WHERE h.collection = :c AND h.feature_id = :id
    """
)


@pytest.mark.parametrize("table", sorted(ROWS))
def test_history_rows_equal_the_triggers(connection: Connection, table: str) -> None:
    act_as(connection, "amina")
    if table == "households":  # they need a structure
        columns, values = ROWS["structures"]
        connection.execute(text(f"INSERT INTO structures ({columns}) SELECT {values.format(n=0)}"))
    columns, values = ROWS[table]
    by_trigger = connection.execute(
        text(f"INSERT INTO {table} ({columns}) SELECT {values.format(n=1)} RETURNING id")
    ).scalar_one()
    assert (
        insert_audited(
            connection, table, f"INSERT INTO {table} ({columns}) SELECT {values.format(n=2)}"
        )
        == 1
    )
    ours = connection.execute(text(f"SELECT max(id) FROM {table}")).scalar_one()
    assert ours != by_trigger
    expected = connection.execute(FROM_TRIGGER_SQL, {"c": table, "id": by_trigger}).one()
    got = connection.execute(FROM_TRIGGER_SQL, {"c": table, "id": ours}).one()
    assert got._asdict() == expected._asdict()
    assert got.changed_by == "amina" and got.action == "create"
    assert got.derived  # the feature is stored once, in the snapshot (migration 0024)
    # and exactly what the trigger's own expression gives for our row, id and all
    exact = connection.execute(
        text(
            f"SELECT makazi_history_changes(h.changes, h.snapshot) = makazi_diff(NULL, to_jsonb(t))"
            f" AS changes, "
            f"h.snapshot = to_jsonb(t) AS snapshot FROM {table} t "
            f"JOIN feature_history h ON h.collection = :c AND h.feature_id = t.id "
            f"WHERE t.id = :id"
        ),
        {"c": table, "id": ours},
    ).one()
    assert (exact.changes, exact.snapshot) == (True, True)
    # the trigger is back on after the statement: the next change is audited
    connection.execute(text(f"UPDATE {table} SET deleted_at = now() WHERE id = :id"), {"id": ours})
    actions = connection.execute(
        text(
            "SELECT array_agg(action ORDER BY version) FROM feature_history "
            "WHERE collection = :c AND feature_id = :id"
        ),
        {"c": table, "id": ours},
    ).scalar_one()
    assert actions == ["create", "delete"]


def test_imported_features_have_one_history_row_each(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path
) -> None:
    make_settlement(connection)
    path = tmp_path / "footprints.gpkg"
    footprints(6).to_file(path, driver="GPKG")
    headers = token_for("mapper", "wanjiru")
    response = post_import(client, path, headers, collection="structures")
    assert response.status_code == 201, response.text
    rows = connection.execute(
        text(
            "SELECT h.changed_by, h.snapshot = to_jsonb(s) AS same, "
            "makazi_history_changes(h.changes, h.snapshot) = makazi_diff(NULL, to_jsonb(s)) "
            "AS diff "
            "FROM structures s JOIN feature_history h "
            "ON h.collection = 'structures' AND h.feature_id = s.id AND h.action = 'create' "
            "WHERE s.import_id = :id"
        ),
        {"id": response.json()["id"]},
    ).all()
    assert len(rows) == 6
    assert {(r.changed_by, r.same, r.diff) for r in rows} == {("wanjiru", True, True)}


def test_row_triggers_fill_only_what_a_statement_leaves_out(connection: Connection) -> None:
    # the merge gives created_by/updated_by and settlement_id itself, so migration 0020's
    # WHEN clauses skip the stamp and locate triggers; any other insert is stamped and placed
    act_as(connection, "amina")
    settlement = make_settlement(connection)
    other = make_settlement(connection, "Elsewhere")
    point = f"ST_SetSRID(ST_MakePoint({KIBERA[0]}, {KIBERA[1]}), 4326)"
    rows = connection.execute(
        text(
            "INSERT INTO structures (structure_number, geom, created_by, updated_by, "
            f"settlement_id) VALUES ('T-1', {point}, NULL, NULL, NULL), "
            f"('T-2', {point}, 'import', NULL, NULL), ('T-3', {point}, 'import', 'import', :o) "
            "RETURNING structure_number, created_by, updated_by, settlement_id"
        ),
        {"o": other},
    ).all()
    assert sorted(tuple(r) for r in rows) == [
        ("T-1", "amina", "amina", settlement),
        ("T-2", "import", "import", settlement),
        ("T-3", "import", "import", other),
    ]
    # an update that clears the settlement places the structure again
    placed = connection.execute(
        text(
            "UPDATE structures SET settlement_id = NULL WHERE structure_number = 'T-3' "
            "RETURNING settlement_id"
        )
    ).scalar_one()
    assert placed == settlement
