"""Migrations: upgrade, downgrade to base and back, tables match geo.tables, triggers."""

from __future__ import annotations

import pytest
from sqlalchemy import Connection, create_engine, inspect, text
from sqlalchemy.exc import DBAPIError

from geo.core.cluster import EmbeddedCluster
from geo.core.db import MIGRATIONS_DIR, current_revision, downgrade, migrate
from geo.core.tables import metadata
from tests.support.db import insert_settlement

FEATURE_TABLES = ("settlements", "structures", "households", "facilities", "traces")


def _head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


@pytest.fixture(scope="module")
def scratch_url(cluster: EmbeddedCluster) -> str:
    return cluster.create_database("makazi_migrations", drop=True)


def test_upgrade_downgrade_upgrade(scratch_url: str) -> None:
    engine = create_engine(scratch_url)
    migrate(scratch_url)
    with engine.connect() as conn:
        assert current_revision(conn) == _head()
        assert set(FEATURE_TABLES) <= set(inspect(conn).get_table_names())
    downgrade(scratch_url, "base")
    with engine.connect() as conn:
        assert current_revision(conn) is None
        assert not set(FEATURE_TABLES) & set(inspect(conn).get_table_names())
        assert (
            conn.execute(text("SELECT 1 FROM pg_extension WHERE extname='postgis'")).first() is None
        )
    migrate(scratch_url)
    with engine.connect() as conn:
        assert current_revision(conn) == _head()
    engine.dispose()


def test_tables_module_matches_database(connection: Connection) -> None:
    inspector = inspect(connection)
    for table in metadata.sorted_tables:
        columns = {col["name"]: col for col in inspector.get_columns(table.name)}
        assert set(columns) == {c.name for c in table.columns}, table.name
        for column in table.columns:
            assert columns[column.name]["nullable"] == column.nullable, (table.name, column.name)


def test_geometry_columns_are_4326_with_gist(connection: Connection) -> None:
    rows = connection.execute(
        text("SELECT f_table_name, srid FROM geometry_columns WHERE f_geometry_column = 'geom'")
    ).all()
    srids = dict(rows)
    for table in ("settlements", "structures", "facilities", "traces"):
        assert srids[table] == 4326
        index = connection.execute(
            text(
                "SELECT indexdef FROM pg_indexes WHERE tablename = :t AND indexdef ILIKE '%gist%'"
            ),
            {"t": table},
        ).scalar()
        assert index is not None, table


SQUARE = "MULTIPOLYGON(((36.78 -1.31,36.79 -1.31,36.79 -1.30,36.78 -1.30,36.78 -1.31)))"


def _settlement(conn: Connection, wkt: str = SQUARE, name: str = "S") -> int:
    return insert_settlement(conn, name, wkt)


def test_constraints_reject_bad_rows(connection: Connection) -> None:
    from sqlalchemy.exc import IntegrityError

    bowtie = "MULTIPOLYGON(((0 0,1 1,1 0,0 1,0 0)))"
    cases = [
        (
            "INSERT INTO settlements (name, geom) VALUES ('x', ST_GeomFromText(:w, 4326))",
            {"w": bowtie},
        ),
        (
            "INSERT INTO settlements (name, status, geom) VALUES ('x', 'bogus', "
            "ST_GeomFromText(:w, 4326))",
            {"w": SQUARE},
        ),
        (
            "INSERT INTO structures (use, geom) VALUES ('palace', ST_GeomFromText(:w, 4326))",
            {"w": "POINT(36.785 -1.305)"},
        ),
        (
            "INSERT INTO structures (geom) VALUES (ST_GeomFromText(:w, 4326))",
            {"w": "LINESTRING(0 0, 1 1)"},
        ),
        (
            "INSERT INTO facilities (type, geom) VALUES ('spa', ST_GeomFromText(:w, 4326))",
            {"w": "POINT(36.785 -1.305)"},
        ),
    ]
    for sql, params in cases:
        savepoint = connection.begin_nested()
        with pytest.raises(IntegrityError):
            connection.execute(text(sql), params)
        savepoint.rollback()
    savepoint = connection.begin_nested()
    with pytest.raises(Exception, match="SRID"):
        connection.execute(
            text("INSERT INTO settlements (name, geom) VALUES ('x', ST_GeomFromText(:w, 3857))"),
            {"w": SQUARE},
        )
    savepoint.rollback()


def test_structure_number_unique_per_settlement(connection: Connection) -> None:
    from sqlalchemy.exc import IntegrityError

    a = _settlement(connection, name="A")
    insert = text(
        "INSERT INTO structures (settlement_id, structure_number, geom) "
        "VALUES (:s, 'KB-01-0001', ST_GeomFromText('POINT(36.785 -1.305)', 4326)) RETURNING id"
    )
    first = connection.execute(insert, {"s": a}).scalar_one()
    savepoint = connection.begin_nested()
    with pytest.raises(IntegrityError):
        connection.execute(insert, {"s": a})
    savepoint.rollback()
    # after a soft delete the number is free again
    connection.execute(text("UPDATE structures SET deleted_at = now() WHERE id = :i"), {"i": first})
    connection.execute(insert, {"s": a})


def test_triggers_version_audit_locate_and_count(connection: Connection) -> None:
    sid = _settlement(connection)
    connection.execute(text("SELECT set_config('makazi.user', 'wanjiru', true)"))
    structure = connection.execute(
        text(
            "INSERT INTO structures (structure_number, use, geom) VALUES "
            "('A-1', 'residential', ST_GeomFromText('POINT(36.785 -1.305)', 4326)) "
            "RETURNING id, settlement_id, version, created_by"
        )
    ).one()
    assert structure.settlement_id == sid  # derived spatially
    assert structure.version == 1 and structure.created_by == "wanjiru"
    connection.execute(
        text("INSERT INTO households (structure_id, members) VALUES (:s, 4), (:s, 2)"),
        {"s": structure.id},
    )
    row = connection.execute(
        text("SELECT households, version FROM structures WHERE id = :s"), {"s": structure.id}
    ).one()
    assert row.households == 2 and row.version == 1  # derived count does not bump version
    connection.execute(
        text("UPDATE structures SET use = 'business' WHERE id = :s"), {"s": structure.id}
    )
    connection.execute(
        text("UPDATE structures SET deleted_at = now() WHERE id = :s"), {"s": structure.id}
    )
    history = connection.execute(
        text(
            "SELECT version, action, changed_by, makazi_history_changes(changes, snapshot) "
            "AS changes FROM feature_history "
            "WHERE collection = 'structures' AND feature_id = :s ORDER BY version"
        ),
        {"s": structure.id},
    ).all()
    assert [h.action for h in history] == ["create", "update", "delete"]
    assert [h.version for h in history] == [1, 2, 3]
    assert history[1].changes == {"use": {"from": "residential", "to": "business"}}
    assert history[2].changed_by == "wanjiru"
    assert history[0].changes["geom"]["to"]["type"] == "Point"  # geometry kept as GeoJSON


def test_trace_history_leaves_the_line_out(connection: Connection) -> None:
    trace = connection.execute(
        text(
            "INSERT INTO traces (name, owner, content_sha256, geom) VALUES ('walk', 'amina', 'x', "
            "ST_GeomFromText('MULTILINESTRING((36.78 -1.31, 36.79 -1.31))', 4326)) RETURNING id"
        )
    ).scalar_one()
    connection.execute(text("UPDATE traces SET visibility = 'public' WHERE id = :i"), {"i": trace})
    rows = connection.execute(
        text(
            "SELECT action, changes, snapshot FROM feature_history WHERE collection = 'traces' "
            "AND feature_id = :i ORDER BY version"
        ),
        {"i": trace},
    ).all()
    assert [r.action for r in rows] == ["create", "update"]
    assert rows[1].changes == {"visibility": {"from": "private", "to": "public"}}
    assert all("geom" not in r.snapshot for r in rows)
    assert rows[0].snapshot["owner"] == "amina"


def test_deleting_a_trace_row_deletes_its_points_and_segments(connection: Connection) -> None:
    trace = connection.execute(
        text("INSERT INTO traces (name, owner, content_sha256) VALUES ('t', 'o', 'h') RETURNING id")
    ).scalar_one()
    connection.execute(
        text(
            "INSERT INTO trace_points (trace_id, kind, seq, geom) VALUES "
            "(:t, 'trkpt', 0, ST_SetSRID(ST_MakePoint(36.78, -1.31), 4326))"
        ),
        {"t": trace},
    )
    connection.execute(
        text(
            "INSERT INTO trace_segments (trace_id, kind, track, segment, points) "
            "VALUES (:t, 'track', 0, 0, 1)"
        ),
        {"t": trace},
    )
    connection.execute(text("DELETE FROM traces WHERE id = :t"), {"t": trace})
    left = connection.execute(
        text(
            "SELECT (SELECT count(*) FROM trace_points WHERE trace_id = :t) + "
            "(SELECT count(*) FROM trace_segments WHERE trace_id = :t)"
        ),
        {"t": trace},
    ).scalar()
    assert left == 0


def test_uploaded_trace_bytes_are_compressed_with_lz4(connection: Connection) -> None:
    """0025: a large upload's bytes go through lz4, and read back as they were sent."""
    try:
        with connection.begin_nested():
            connection.execute(text("CREATE TEMP TABLE lz4_probe (b bytea COMPRESSION lz4)"))
    except DBAPIError:
        pytest.skip("this PostgreSQL is built without lz4 (the migration keeps pglz)")
    trace = connection.execute(
        text("INSERT INTO traces (name, owner, content_sha256) VALUES ('t', 'o', 'h') RETURNING id")
    ).scalar_one()
    content = b"<trkpt lat='-1.31' lon='36.78'/>\n" * 20_000  # compressible, past TOAST's threshold
    connection.execute(
        text(
            "INSERT INTO trace_files (trace_id, content_type, size_bytes, content) "
            "VALUES (:t, 'application/gpx+xml', :n, :c)"
        ),
        {"t": trace, "n": len(content), "c": content},
    )
    method, stored = connection.execute(
        text("SELECT pg_column_compression(content), content FROM trace_files WHERE trace_id = :t"),
        {"t": trace},
    ).one()
    assert (method, bytes(stored)) == ("lz4", content)
