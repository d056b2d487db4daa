"""Pages read over psycopg in one round trip: the same rows, tag, count and transaction ends."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.exc import ProgrammingError

from geo.core.auth import ROLES, Principal
from geo.core.db import Database, make_engine
from geo.core.settings import Settings
from geo.demo.generator import generate
from geo.demo.loader import load
from geo.layers import items
from geo.layers.items import (
    ItemsRequest,
    count_if_cheap,
    open_page,
    page_text,
    parse_items_request,
    read_page,
    start_page,
)
from geo.layers.registry import COLLECTIONS
from tests.support.db import round_trips
from tests.support.live import LiveServer

CRS_4326 = "http://www.opengis.net/def/crs/EPSG/0/4326"
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
    # filtered pages: CQL2 (text and JSON, a LIKE with its %, an IN list), property
    # conditions (an expanding IN), bbox (in two CRSs), datetime
    {"limit": 6, "filter": "storeys >= 2 AND use <> 'toilet'"},
    {"limit": 6, "filter": "structure_number LIKE '%1%'", "after": 30},
    {"limit": 6, "filter": "use IN ('residential', 'business')", "before": 90},
    {
        "limit": 6,
        "filter-lang": "cql2-json",
        "filter": json.dumps({"op": ">=", "args": [{"property": "storeys"}, 2]}),
    },
    {"limit": 6, "use": "residential,business", "storeys": "1,2", "offset": 4},
    {"limit": 6, "bbox": "36.6,-1.5,37.0,-1.1", "after": 20},
    {"limit": 6, "bbox": "-1.5,36.6,-1.1,37.0", "bbox-crs": CRS_4326},
    {"limit": 6, "datetime": "2000-01-01T00:00:00Z/..", "skipGeometry": "true"},
]


def test_page_text_reads_what_the_statement_reads(connection: Connection, demo: int) -> None:
    for params in SHAPES:
        cursors = {k: v + demo for k, v in params.items() if k in ("after", "before")}
        parsed = request("structures", **{**params, **cursors})
        expected = open_page(connection, parsed).first
        assert expected, params  # the case reads something
        assert text_rows(connection, parsed) == expected, params


def test_read_page_reads_bytes_and_counts_as_the_statement_does(
    connection: Connection, demo: int
) -> None:
    """Inside a caller's transaction (left open): the Feature texts as bytes, and the count
    of an overflowing first page as ``count_if_cheap`` makes it."""
    counted = 0
    for params in SHAPES:
        cursors = {k: v + demo for k, v in params.items() if k in ("after", "before")}
        parsed = request("structures", **{**params, **cursors})
        page_sql = page_text(parsed)
        assert page_sql is not None
        _, page = read_page(connection, parsed, "q", page_sql)
        expected = open_page(connection, parsed)
        assert page.first == [(i, t.encode()) for i, t in expected.first], params
        assert page.texts() == expected.texts()
        wanted = count_if_cheap(connection, parsed) if parsed.first_page else None
        assert page.matched == (wanted if page.overflows else None), params
        counted += page.matched is not None
    assert counted >= 3  # the cases include first pages that overflow
    assert _status(connection) is TransactionStatus.INTRANS


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
        # a filter narrows what the caller sees, never widens it
        filtered = request("traces", user, limit=100, filter="name LIKE '%private'")
        mine = text_rows(connection, filtered)
        assert mine == open_page(connection, filtered).first
        assert {json.loads(row[1])["properties"]["name"] for row in mine} == {
            name for name in names if name.endswith("private")
        }


def test_sorted_pages_have_no_page_text_and_filters_are_written_once() -> None:
    assert page_text(request("structures", sortby="-storeys")) is None
    assert page_text(request("structures", limit=3, after=5)) is not None
    walk = [request("structures", filter="storeys >= 2", after=n) for n in (5, 9)]
    assert walk[0].where[0] is walk[1].where[0]  # the same text, the same condition
    first, second = (page_text(parsed) for parsed in walk)
    assert first is not None and second is not None
    assert first[0] == second[0]
    assert (first[1]["after"], second[1]["after"]) == (5, 9)


def _status(conn: Connection) -> TransactionStatus:
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    return raw.info.transaction_status


def test_read_page_tag_and_transaction(engine: Engine) -> None:
    """On a pooled connection: the tag is start_page's, every page (a first page, an empty
    one of a bbox too) ends its transaction in the pipeline; inside a caller's transaction,
    parallel workers are off for the page and the transaction is left to its owner."""
    db = Database(engine)
    later = request("structures", limit=2, after=1)
    first = request("structures", limit=2, bbox="10,10,10.1,10.1")
    with db.read() as conn:
        expected = start_page(conn, later.collection, "q", None)
    for parsed in (later, first):
        page_sql = page_text(parsed)
        assert page_sql is not None
        with db.read() as conn:
            tag, page = read_page(conn, parsed, "q", page_sql)
            assert _status(conn) is TransactionStatus.IDLE
            assert page.complete and not page.overflows
            # the empty page's hint reads on, in a transaction of its own
            assert conn.execute(text("SELECT 1")).scalar() == 1
        assert tag == expected
    with engine.connect() as conn, conn.begin():
        read_page(conn, first, "q", page_sql)
        assert _status(conn) is TransactionStatus.INTRANS
        setting = conn.execute(text("SHOW max_parallel_workers_per_gather")).scalar()
        assert setting == "0"
    with db.read() as conn:
        assert conn.execute(text("SHOW max_parallel_workers_per_gather")).scalar() != "0"


def test_read_page_counts_a_first_page_and_ends_its_transaction(
    live_server: LiveServer, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An overflowing first page (the live server's 400 committed structures): counted, when
    cheap, in a second round trip that also ends the transaction; when the count would be
    dear, no count, and the transaction ends all the same."""
    engine = make_engine(live_server.database_url, settings, pool_size=1)
    db = Database(engine)
    first = request("structures", limit=2, filter="storeys >= 2")
    page_sql = page_text(first)
    assert page_sql is not None
    try:
        with db.read() as conn:
            expected = conn.execute(
                text("SELECT count(*) FROM structures WHERE deleted_at IS NULL AND storeys >= 2")
            ).scalar_one()
        with db.read() as conn:
            _, page = read_page(conn, first, "q", page_sql)
            assert page.overflows and page.matched == expected > 2
            assert _status(conn) is TransactionStatus.IDLE
        monkeypatch.setattr(items, "EXACT_COUNT_MAX_COST", -1.0)
        with db.read() as conn:
            _, page = read_page(conn, first, "q", page_sql)
            assert page.overflows and page.matched is None
            assert _status(conn) is TransactionStatus.IDLE
    finally:
        engine.dispose()


def test_plain_pages_keep_their_prepared_statements(
    live_server: LiveServer, settings: Settings
) -> None:
    """Pages, first pages too, end their read in their own pipeline: psycopg's
    ``Connection.rollback()`` (the pool's, for a connection returned inside a transaction)
    deallocates every prepared statement of the connection."""
    engine = make_engine(live_server.database_url, settings, pool_size=1)
    db = Database(engine)
    later = request("structures", limit=3, after=10)
    first = request("structures", limit=3)
    try:
        for parsed in (later, first) * 7:  # psycopg prepares at the sixth run
            page_sql = page_text(parsed)
            assert page_sql is not None
            with db.read() as conn:
                read_page(conn, parsed, "q", page_sql)
        with db.read() as conn:
            prepared = conn.execute(text("SELECT statement FROM pg_prepared_statements")).scalars()
            pages = [s for s in prepared if s.startswith("SELECT t.id AS id")]
        assert len(pages) == 2  # the walk's page and the first page
    finally:
        engine.dispose()


def test_a_page_is_one_round_trip_its_transaction_included(
    live_server: LiveServer, settings: Settings
) -> None:
    """The read transaction's ``BEGIN`` goes in the page's pipeline (psycopg's own would
    wait for its answer first), and the connection goes back to the pool as it came."""
    engine = make_engine(live_server.database_url, settings, pool_size=1)
    db = Database(engine)
    try:
        for parsed in (request("structures", limit=3, after=10), request("structures", limit=3)):
            page_sql = page_text(parsed)
            assert page_sql is not None
            with db.read() as conn:
                raw = conn.connection.driver_connection
                assert isinstance(raw, psycopg.Connection)
                with round_trips(raw) as trips:
                    read_page(conn, parsed, "q", page_sql)
                assert _status(conn) is TransactionStatus.IDLE
            # the first page overflows: its count is a second read, in a round trip of its own
            assert trips.count == (1 if parsed.after is not None else 2)
            with db.read() as conn:
                raw = conn.connection.driver_connection
                assert isinstance(raw, psycopg.Connection)
                assert not raw.autocommit  # psycopg opens the next transaction itself again
                assert conn.execute(text("SHOW max_parallel_workers_per_gather")).scalar() != "0"
    finally:
        engine.dispose()


def test_read_page_errors_as_sqlalchemy_does(engine: Engine) -> None:
    db = Database(engine)
    parsed = request("structures", limit=2, after=1)
    with pytest.raises(ProgrammingError, match="no_such_column"), db.read() as conn:
        read_page(conn, parsed, "q", ("SELECT no_such_column FROM structures", {}))
    with db.read() as conn:  # the connection went back to the pool usable
        assert conn.execute(text("SELECT 1")).scalar() == 1


HTTP_SHAPES: list[dict[str, Any]] = [
    {"limit": 5},
    {"limit": 5, "after": 20},
    {"limit": 5, "before": 60},
    {"limit": 5, "offset": 7, "skipGeometry": "true"},
    {"limit": 9, "filter": "storeys >= 2"},
    {"limit": 3, "filter": "storeys >= 2", "after": 30},
    {"limit": 1000, "filter": "use = 'school'"},
    {
        "limit": 4,
        "use": "residential,business",
        "crs": "http://www.opengis.net/def/crs/EPSG/0/32737",
    },
    {"limit": 4, "bbox": "36.6,-1.5,37.0,-1.1"},
    {"bbox": "-1.3,36.8,-1.2,36.9"},  # swapped axes: an empty first page with a hint
]
STAMP = re.compile(rb'"timeStamp": "[^"]*"')
PER_RESPONSE = {"date", "x-request-id"}


def _answer(response: httpx.Response) -> tuple[int, bytes, dict[str, str]]:
    headers = {k: v for k, v in response.headers.items() if k not in PER_RESPONSE}
    return response.status_code, STAMP.sub(b"", response.content), headers


def test_pages_over_http_answer_as_the_statement_path_does(live_server: LiveServer) -> None:
    """Every page shape, for every role: the one-round-trip answer is byte for byte the one
    of the SQLAlchemy statement path (which a revalidation that does not match takes), the
    tag revalidates to a 304, and no connection is left idle in a transaction."""
    url = f"{live_server.base_url}/collections/{{}}/items"
    roles: list[str | None] = [None, *ROLES]
    public: dict[str, Any] = {}
    with httpx.Client(headers={"Accept-Encoding": "identity"}) as client:
        for role, collection, params in itertools.product(
            roles, ("structures", "traces"), HTTP_SHAPES
        ):
            if collection == "traces" and {"filter", "use"} & params.keys():
                continue
            auth = live_server.headers(role) if role else {}
            fast = client.get(url.format(collection), params=params, headers=auth)
            assert fast.status_code == 200, fast.text
            stale = {**auth, "If-None-Match": 'W/"0-stale"'}
            slow = client.get(url.format(collection), params=params, headers=stale)
            assert _answer(fast) == _answer(slow), (role, collection, params)
            again = {**auth, "If-None-Match": fast.headers["ETag"]}
            cached = client.get(url.format(collection), params=params, headers=again)
            assert cached.status_code == 304 and cached.content == b""
            if role is None and collection == "structures":
                public[str(params)] = fast.json()
    counted, whole, empty = (
        public[str(params)] for params in (HTTP_SHAPES[4], HTTP_SHAPES[6], HTTP_SHAPES[-1])
    )
    expected = live_server.query(
        "SELECT count(*) FROM structures WHERE deleted_at IS NULL AND storeys >= 2"
    )[0][0]
    assert counted["numberReturned"] == 9 and counted["numberMatched"] == expected
    assert whole["numberMatched"] == whole["numberReturned"] > 0
    assert empty["numberMatched"] == 0 and "hint" in empty
    idle = live_server.query(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND state = 'idle in transaction'"
    )
    assert idle[0][0] == 0
