"""A small upload's round trips on a real pool: the store opens and commits its own
transaction in one round trip (``own_begin``), and every answer stays the same."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, text

from geo.core.db import Database, own_begin
from geo.core.errors import InvalidInput
from geo.core.uploads import BodySpool
from geo.traces.ingest import IngestResult, TraceLimits, ingest_trace
from tests.support.db import round_trips
from tests.traces.test_traces import gpx_track, live_and_deleted_settlements, walk

OWNER = "round-trip-mapper"


@pytest.fixture
def database(engine: Engine) -> Iterator[Database]:
    """The app's database on the test cluster (writes commit; removed afterwards)."""
    yield Database(engine)
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL makazi.audit = 'off'"))
        ids = [
            r.id for r in conn.execute(text("SELECT id FROM traces WHERE owner = :o"), {"o": OWNER})
        ]
        conn.execute(text("DELETE FROM traces WHERE owner = :o"), {"o": OWNER})
        conn.execute(
            text(
                "DELETE FROM feature_history WHERE collection = 'traces' AND feature_id = ANY(:i)"
            ),
            {"i": ids},
        )
        conn.execute(text("DELETE FROM settlements WHERE name LIKE 'round-trip %'"))


def _ingest(
    database: Database,
    body: bytes,
    *,
    last: bool,
    limits: TraceLimits | None = None,
    settlement_id: int | None = None,
) -> tuple[IngestResult, int, psycopg.Connection[Any]]:
    """Ingest ``body`` as the app does (actor deferred); the result, the round trips
    of the transaction (``ReadyForQuery`` in libpq's trace) and its driver connection."""
    spool = BodySpool(limit=1 << 20)
    spool.write(body)
    upload = spool.finish()
    try:
        # the count ends after the transaction, so that its commit is counted
        with ExitStack() as counting, database.begin(actor=OWNER, defer_actor=True) as conn:
            raw = conn.connection.driver_connection
            assert isinstance(raw, psycopg.Connection)
            trips = counting.enter_context(round_trips(raw))
            result = ingest_trace(
                conn,
                owner=OWNER,
                body=upload,
                name=None,
                visibility="private",
                settlement_id=settlement_id,
                limits=limits or TraceLimits(),
                last=last,
            )
    finally:
        upload.close()
    return result, trips.count, raw


def _stored(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT t.id, t.created_by, h.changed_by, t.warnings FROM traces t "
                "JOIN feature_history h ON h.collection = 'traces' AND h.feature_id = t.id "
                "WHERE t.owner = :o ORDER BY t.id"
            ),
            {"o": OWNER},
        ).all()
    return [tuple(row) for row in rows]


def test_new_upload_in_one_round_trip(database: Database, engine: Engine) -> None:
    """``last``: begin, actor, lock, look-up, store and commit in one round trip; without
    it the commit is a second; the same bytes again answer 200 with the same summary."""
    first, trips, raw = _ingest(database, walk(50), last=True)
    assert first.created and trips == 1
    assert raw.autocommit is False  # psycopg opens the connection's transactions again
    second, trips, raw = _ingest(database, walk(60), last=False)
    assert second.created and trips == 2
    assert raw.autocommit is False  # turned off at check-in
    again, _, _ = _ingest(database, walk(50), last=True)
    assert not again.created and again.trace_id == first.trace_id
    assert again.body == first.body
    stored = _stored(engine)
    assert [row[0] for row in stored] == [first.trace_id, second.trace_id]
    assert all(row[1] == row[2] == OWNER for row in stored)


def test_declined_store_takes_the_ordinary_road(database: Database, engine: Engine) -> None:
    """A store declined after its own commit (far away, a deleted settlement) answers as
    before, in the next transaction, under the same actor."""
    far = gpx_track([(-4.04 + i * 1e-5, 39.66, None) for i in range(5)])
    limits = TraceLimits(max_km_from_settlements=5)
    with engine.begin() as conn:
        _, gone = live_and_deleted_settlements(conn, "round-trip ")
    result, _, raw = _ingest(database, far, last=True, limits=limits)
    assert result.created and raw.autocommit is False
    assert "km from the nearest settlement" in result.body.decode()
    with pytest.raises(InvalidInput, match=f"settlement_id {gone} does not exist"):
        _ingest(database, walk(7), last=True, settlement_id=gone)
    stored = _stored(engine)
    assert len(stored) == 1 and stored[0][1] == stored[0][2] == OWNER
    assert "km from the nearest settlement" in stored[0][3][0]


def test_own_begin_only_before_the_first_statement(engine: Engine, database_url: str) -> None:
    """Not once a statement was sent, nor on an engine without the pool's check-in hook."""
    with engine.begin() as conn:
        conn.execute(text("SELECT 1"))
        assert own_begin(conn) is None
    with engine.begin() as conn:
        raw = own_begin(conn)
        assert raw is not None and raw.autocommit
        raw.execute("BEGIN")
        conn.execute(text("SELECT set_config('makazi.probe', 'x', true)"))
        # later statements run inside the transaction the caller opened
        assert conn.execute(text("SELECT current_setting('makazi.probe')")).scalar() == "x"
    assert raw.autocommit is False
    plain = create_engine(engine.url)
    try:
        with plain.begin() as conn:
            assert own_begin(conn) is None
    finally:
        plain.dispose()


def test_history_of_a_new_trace(database: Database, engine: Engine) -> None:
    """A new trace's history row keeps the trace once (migration 0027): ``changes`` NULL,
    read back through ``makazi_history_changes`` as the diff it used to store."""
    result, _, _ = _ingest(database, walk(30), last=True)
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT h.action, h.changes, h.snapshot = makazi_trace_json(t) AS same_snapshot, "
                "makazi_history_changes(h.changes, h.snapshot) "
                "= makazi_diff(NULL, makazi_trace_json(t)) AS same_changes, "
                "makazi_history_changes(h.changes, h.snapshot) -> 'points' AS points "
                "FROM traces t JOIN feature_history h "
                "ON h.collection = 'traces' AND h.feature_id = t.id WHERE t.id = :i"
            ),
            {"i": result.trace_id},
        ).one()
    assert row.action == "create" and row.changes is None
    assert row.same_snapshot and row.same_changes
    assert row.points == {"from": None, "to": 30}
