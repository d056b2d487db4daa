"""Plain pages read over psycopg in one round trip: the same rows, tag and transaction ends."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.exc import ProgrammingError

from geo.core.auth import Principal
from geo.core.db import Database
from geo.demo.generator import generate
from geo.demo.loader import load
from geo.layers.items import (
    ItemsRequest,
    open_page,
    page_text,
    parse_items_request,
    read_page,
    start_page,
)
from geo.layers.registry import COLLECTIONS

OWNER = Principal(name="asha", role="mapper", token_id=1)
OTHER = Principal(name="juma", role="viewer", token_id=2)
ADMIN = Principal(name="root", role="admin", token_id=3)


def request(collection: str, user: Principal | None = None, **params: Any) -> ItemsRequest:
    return parse_items_request(
        COLLECTIONS[collection],
        [(k, str(v)) for k, v in params.items()],
        user=user,
        default_limit=10,
        max_limit=10_000,
    )


def text_rows(conn: Connection, parsed: ItemsRequest) -> list[tuple[int, str]]:
    page_sql = page_text(parsed)
    assert page_sql is not None
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    return [(int(r[0]), str(r[1])) for r in raw.execute(*page_sql).fetchall()]


@pytest.fixture
def demo(connection: Connection) -> int:
    """300 structures (every 7th deleted) and traces of each visibility by two owners; the
    id before the first structure (ids go on across tests)."""
    load(connection, generate(300, seed=5))
    for owner in ("asha", "juma"):
        for visibility in ("private", "community", "public"):
            connection.execute(
                text(
                    "INSERT INTO traces (name, owner, visibility, content_sha256, geom) VALUES "
                    "(:n, :o, :v, :n, ST_GeomFromText('MULTILINESTRING((36.78 -1.31, 36.79 "
                    "-1.31))', 4326))"
                ),
                {"n": f"{owner}-{visibility}", "o": owner, "v": visibility},
            )
    connection.execute(text("UPDATE structures SET deleted_at = now() WHERE id % 7 = 0"))
    return int(connection.execute(text("SELECT min(id) - 1 FROM structures")).scalar_one())


SHAPES: list[dict[str, Any]] = [
    {"limit": 7},
    {"limit": 7, "after": 40},
    {"limit": 7, "before": 60},
    {"limit": 5, "after": 40, "offset": 3},
    {"limit": 4, "offset": 9},
    {"limit": 3, "skipGeometry": "true"},
    {"limit": 3, "crs": "http://www.opengis.net/def/crs/EPSG/0/32737"},
    {"limit": 3, "crs": "http://www.opengis.net/def/crs/EPSG/0/4326", "after": 12},
]


def test_page_text_reads_what_the_statement_reads(connection: Connection, demo: int) -> None:
    for params in SHAPES:
        cursors = {k: v + demo for k, v in params.items() if k in ("after", "before")}
        parsed = request("structures", **{**params, **cursors})
        expected = open_page(connection, parsed).first
        assert expected, params  # the case reads something
        assert text_rows(connection, parsed) == expected, params


def test_page_text_shows_each_caller_what_visible_shows(connection: Connection, demo: int) -> None:
    traces = COLLECTIONS["traces"]
    for user in (None, OWNER, OTHER, ADMIN):
        parsed = request("traces", user, limit=100)
        condition = traces.visible(user)
        visible = {row[0] for row in connection.execute(select(traces.table.c.id).where(condition))}
        got = text_rows(connection, parsed)
        assert {row[0] for row in got} == visible, user
        assert got == open_page(connection, parsed).first
        names = {json.loads(row[1])["properties"]["name"] for row in got}
        assert ("asha-private" in names) == (user in (OWNER, ADMIN))
        assert ("juma-private" in names) == (user in (OTHER, ADMIN))
        assert ("juma-community" in names) == (user is not None)


def test_filtered_and_sorted_pages_have_no_page_text() -> None:
    assert page_text(request("structures", filter="storeys >= 2")) is None
    assert page_text(request("structures", bbox="36.7,-1.4,36.9,-1.2")) is None
    assert page_text(request("structures", sortby="-storeys")) is None
    assert page_text(request("structures", limit=3, after=5)) is not None


def _status(conn: Connection) -> TransactionStatus:
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    return raw.info.transaction_status


def test_read_page_tag_and_transaction(engine: Engine) -> None:
    """On a pooled connection: the tag is start_page's, parallel workers are off for the page,
    a later page ends its transaction in the pipeline, a first page leaves it to the count."""
    db = Database(engine)
    later = request("structures", limit=2, after=1)
    first = request("structures", limit=2)
    with db.read() as conn:
        expected = start_page(conn, later.collection, "q", None)
    with db.read() as conn:
        page_sql = page_text(later)
        assert page_sql is not None
        tag, page = read_page(conn, later, "q", page_sql)
        assert tag == expected
        assert _status(conn) is TransactionStatus.IDLE
        assert page.complete and not page.overflows
    with db.read() as conn:
        raw = conn.connection.driver_connection
        page_sql = page_text(first)
        assert page_sql is not None
        read_page(conn, first, "q", page_sql)
        assert _status(conn) is TransactionStatus.INTRANS
        setting = conn.execute(text("SHOW max_parallel_workers_per_gather")).scalar()
        assert setting == "0"
    assert isinstance(raw, psycopg.Connection)
    assert raw.info.transaction_status is TransactionStatus.IDLE
    with db.read() as conn:
        assert conn.execute(text("SHOW max_parallel_workers_per_gather")).scalar() != "0"


def test_read_page_errors_as_sqlalchemy_does(engine: Engine) -> None:
    db = Database(engine)
    parsed = request("structures", limit=2, after=1)
    with pytest.raises(ProgrammingError, match="no_such_column"), db.read() as conn:
        read_page(conn, parsed, "q", ("SELECT no_such_column FROM structures", {}))
    with db.read() as conn:  # the connection went back to the pool usable
        assert conn.execute(text("SELECT 1")).scalar() == 1
