"""Statement triggers plan each call for its own rows (migration 0026).

PL/pgSQL keeps a statement's plan for the database session; planned for a
one-row write, the audit's join of ``new_rows`` to ``old_rows`` and the
household count were quadratic for every later bulk write on that connection.
Each test opens its own session, so the trigger's first call happens inside it.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.pool import NullPool

STRUCTURES = (
    "INSERT INTO structures (structure_number, use, geom) "
    "SELECT 'PLAN-' || g, 'residential', ST_SetSRID(ST_MakePoint(36.78 + g * 1e-5, -1.31), 4326) "
    "FROM generate_series(1, :n) g"
)
MINE = "SELECT id FROM structures WHERE structure_number LIKE 'PLAN-%'"


@pytest.fixture
def session(database_url: str) -> Iterator[Connection]:
    """A new database session inside a transaction that is rolled back."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn, conn.begin() as transaction:
            yield conn
            transaction.rollback()
    finally:
        engine.dispose()


def _nested_plans(conn: Connection, statement: str) -> list[str]:
    """The plans of the statements ``statement`` runs inside triggers (auto_explain)."""
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    plans: list[str] = []
    raw.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
    conn.execute(text("LOAD 'auto_explain'"))
    for name, value in {
        "auto_explain.log_min_duration": "0",
        "auto_explain.log_nested_statements": "on",
        "auto_explain.log_level": "notice",
        "client_min_messages": "notice",
    }.items():
        conn.execute(text("SELECT set_config(:n, :v, true)"), {"n": name, "v": value})
    conn.execute(text(statement))
    conn.execute(text("SELECT set_config('auto_explain.log_min_duration', '-1', true)"))
    return plans


def test_a_bulk_update_after_a_single_one_joins_its_rows_by_hash(session: Connection) -> None:
    session.execute(text(STRUCTURES), {"n": 400})
    session.execute(text(f"UPDATE structures SET storeys = 2 WHERE id = ({MINE} LIMIT 1)"))
    plans = _nested_plans(session, f"UPDATE structures SET storeys = 3 WHERE id IN ({MINE})")
    audit = [p for p in plans if "JOIN old_rows o ON o.id = n.id" in p]
    assert len(audit) == 1, plans
    assert "Nested Loop" not in audit[0], audit[0]
    rows = session.execute(
        text(
            "SELECT count(*) FROM feature_history WHERE collection = 'structures' "
            f"AND action = 'update' AND feature_id IN ({MINE})"
        )
    ).scalar_one()
    assert rows == 400 + 1


def test_bulk_households_after_a_single_one_are_counted_by_index(session: Connection) -> None:
    session.execute(text("ANALYZE households"))  # as autovacuum does to a new, empty table
    session.execute(text(STRUCTURES), {"n": 2000})
    session.execute(
        text(f"INSERT INTO households (structure_id, members) SELECT id, 1 FROM ({MINE} LIMIT 1) s")
    )
    scans = text(
        "SELECT coalesce(sum(seq_scan), 0) FROM pg_stat_xact_user_tables "
        "WHERE relname = 'households'"
    )
    before = session.execute(scans).scalar_one()
    session.execute(
        text(
            "INSERT INTO households (structure_id, members) "
            f"SELECT id, 3 FROM ({MINE}) s CROSS JOIN generate_series(1, 3)"
        )
    )
    after = session.execute(scans).scalar_one()
    counts = session.execute(
        text(
            "SELECT households, count(*) FROM structures "
            "WHERE structure_number LIKE 'PLAN-%' GROUP BY 1 ORDER BY 1"
        )
    ).all()
    assert [tuple(row) for row in counts] == [(3, 1999), (4, 1)]
    assert after - before < 10, f"{after - before} scans of households for one insert"
