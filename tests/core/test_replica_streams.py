"""A replica stopped (``pg_ctl stop -m immediate``) while an export streams from it.

The export carries on from the primary after the last row sent, so the client gets
exactly the bytes the primary alone would have sent.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import create_engine, text

from geo.core.auth import create_token
from geo.core.db import Database, make_engine
from geo.core.settings import Settings
from geo.demo.generator import generate
from geo.demo.loader import load
from geo.exports.postgis import csv_chunks, geojson_chunks, kml_chunks
from geo.exports.query import ExportRows
from geo.exports.resume import Builder, resumable
from geo.layers.registry import COLLECTIONS
from tests.core.test_replicas import Pair, pair, wait_for
from tests.support.server import makazi_on

__all__ = ["pair"]  # the fixture, shared with test_replicas

STRUCTURES = COLLECTIONS["structures"]
MAKAZI_ON_REPLICA = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'makazi'"
EXPORT_ON_REPLICA = (
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'makazi' "
    "AND query ILIKE 'fetch forward%'"  # a server-side cursor's reads
)


@pytest.fixture(scope="module")
def planner(pair: Pair) -> str:
    """A planner token (exports), and enough structures for a long export."""
    engine = create_engine(pair.primary.url())
    with engine.begin() as conn:
        load(conn, generate(2500, seed=11))
        token = create_token(conn, name="streams-planner", role="planner")
    engine.dispose()
    pair.resume()
    return token


def restart_replica(pair: Pair) -> None:
    """Start the replica again; return once it streams and has replayed everything."""
    pair.replica.start()
    pair.resume()
    wait_for(
        lambda: (
            pair.sql(
                "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'",
                on_replica=True,
            )
            == 1
        )
    )


@pytest.mark.parametrize(
    "build", [geojson_chunks, csv_chunks, kml_chunks], ids=["geojson", "csv", "kml"]
)
def test_an_export_carries_on_from_the_primary_when_its_replica_dies(
    pair: Pair, planner: str, build: Builder
) -> None:
    settings = Settings(database_url=pair.primary.url())
    db = Database(
        make_engine(pair.primary.url(), settings), [make_engine(pair.replica.url(), settings)]
    )
    rows = ExportRows(STRUCTURES, None, batch=100)
    try:
        db.replicas.check()
        assert db.replicas.states()[0].healthy
        with db.engine.connect() as conn:
            expected = b"".join(build(conn, rows))
        replica = db.replicas.engines[0]
        got: list[bytes] = []
        with replica.connect() as conn:
            chunks = resumable(db, conn, rows, build, timeout_ms=60_000)
            while len(got) < 3:  # the header (or a first batch) and more: mid-stream
                got.append(next(chunks))
            pair.replica.stop(mode="immediate")
            got.extend(chunks)
        assert len(got) > 5
        assert b"".join(got) == expected
        if build is not csv_chunks:
            # read a batch at a time from a server-side cursor: the replica died mid-export
            # and the resume marked it down.  COPY may have sent every row to the socket
            # before the stop, so for CSV only the bytes are checked.
            assert db.replicas.states()[0].healthy is False
    finally:
        db.dispose()
        restart_replica(pair)


def raw_get(base: str, path: str, headers: dict[str, str]) -> socket.socket:
    """Send a GET on a socket with a small receive buffer (so the server cannot run ahead)."""
    parts = urlsplit(base)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
    lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def export_read_from_the_replica(
    pair: Pair, base: str, path: str, headers: dict[str, str]
) -> tuple[socket.socket, bytes]:
    """Start the export until one is read from the replica (its cursor open there): the
    socket and the first bytes.  Until the app's first check, reads go to the primary."""
    for _ in range(20):
        sock = raw_get(base, path, headers)
        first = sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if pair.sql(EXPORT_ON_REPLICA, on_replica=True) > 0:
                return sock, first
            time.sleep(0.1)
        sock.close()
    raise AssertionError("no export was read from the replica")


def read_all(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def dechunk(raw: bytes) -> tuple[str, bytes]:
    """(status line and headers, body) of a chunked HTTP/1.1 answer, checking its end."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    body = bytearray()
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        body += rest[:size]
        assert rest[size : size + 2] == b"\r\n", "a chunk is cut short"
        rest = rest[size + 2 :]
    return head.decode("latin-1"), bytes(body)


def test_a_streamed_export_is_whole_when_its_replica_stops_midway(pair: Pair, planner: str) -> None:
    auth = {"Authorization": f"Bearer {planner}"}
    path = "/exports/structures?format=geojson"
    with makazi_on(pair.primary.url(), export_batch_rows="50") as (base, _):
        expected = httpx.get(base + path, headers=auth, timeout=60).content
    assert expected.endswith(b"]}")
    try:
        with makazi_on(
            pair.primary.url(),
            database_replica_urls=pair.replica.url(),
            replica_check_s="0.2",
            export_batch_rows="50",
        ) as (base, _):
            httpx.get(base + "/collections/structures/items?limit=1")  # starts the checks
            wait_for(lambda: pair.sql(MAKAZI_ON_REPLICA, on_replica=True) > 0)
            sock, first = export_read_from_the_replica(pair, base, path, auth)
            with sock:
                # the export's cursor is open on the replica: it dies in mid-stream
                pair.replica.stop(mode="immediate")
                head, body = dechunk(first + read_all(sock))
            assert "transfer-encoding: chunked" in head.lower()
            assert len(body) == len(expected)
            assert body == expected
            # the service goes on answering, from the primary
            assert httpx.get(base + "/collections/structures/items?limit=1").status_code == 200
    finally:
        restart_replica(pair)


def test_a_replica_lost_after_a_read_fails_nothing(pair: Pair) -> None:
    # the rows are read; the server goes away before the read transaction ends
    settings = Settings(database_url=pair.primary.url())
    db = Database(
        make_engine(pair.primary.url(), settings), [make_engine(pair.replica.url(), settings)]
    )
    try:
        db.replicas.check()
        assert db.replicas.states()[0].healthy
        with db.read() as conn:
            assert not db.on_primary(conn)
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            count = conn.execute(text("SELECT count(*) FROM structures")).scalar_one()
            pair.sql(f"SELECT pg_terminate_backend({pid})", on_replica=True)
            wait_for(
                lambda: (
                    pair.sql(
                        f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}", on_replica=True
                    )
                    == 0
                )
            )
        assert count > 0
        assert db.replicas.states()[0].healthy is False  # skipped until the next check
    finally:
        db.dispose()
