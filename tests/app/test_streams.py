"""Streams that end: a client that goes away mid-body gives back its cursor and connection.

A real uvicorn server streams a big page of items and an analysis's features
to a raw socket that reads a few kilobytes (a tiny receive buffer, so the
server is still sending) and hangs up. The server's sessions must then leave
``idle in transaction`` / ``active`` at once, not when a garbage collector
gets round to the abandoned generator.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import httpx
import pytest
from sqlalchemy import create_engine, text

from geo.core.cluster import EmbeddedCluster
from tests.support.live import LiveServer, live_server_running

BIG: dict[str, int] = {}
"""Ids in the big server: ``trace``, a public walk of 80,000 points (about 8 MB of GPX)."""

BUSY = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name = 'makazi' AND state IN ('idle in transaction', 'active')"
)


@pytest.fixture(scope="module")
def big_server(cluster: EmbeddedCluster) -> Iterator[LiveServer]:
    """A server whose structures make a body of megabytes (20,000 small squares)."""
    with live_server_running(cluster, structures=0, database="makazi_streams") as server:
        engine = create_engine(server.database_url)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO structures (structure_number, use, storeys, geom) "
                    "SELECT 'S-' || i, 'residential', 1, ST_Multi(ST_MakeEnvelope("
                    "36.78 + (i % 200) * 1e-4, -1.31 + (i / 200) * 1e-4, "
                    "36.78 + (i % 200) * 1e-4 + 4e-5, -1.31 + (i / 200) * 1e-4 + 4e-5, 4326)) "
                    "FROM generate_series(1, 20000) i"
                )
            )
        engine.dispose()
        points = "".join(
            f'<trkpt lat="{-1.31 + i * 2e-7:.7f}" lon="36.78"><time>2026-01-01T'
            f"{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z</time></trkpt>"
            for i in range(80_000)
        )
        walk = (
            '<?xml version="1.0"?><gpx version="1.1" creator="t" '
            f'xmlns="http://www.topografix.com/GPX/1/1"><trk><trkseg>{points}</trkseg></trk></gpx>'
        ).encode()
        uploaded = httpx.post(
            f"{server.base_url}/traces?visibility=public",
            content=walk,
            headers={**server.headers("mapper"), "Content-Type": "application/gpx+xml"},
            timeout=300,
        )
        assert uploaded.status_code == 201, uploaded.text
        BIG["trace"] = uploaded.json()["id"]
        yield server


def busy_sessions(server: LiveServer) -> int:
    engine = create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(BUSY)).scalar_one())
    finally:
        engine.dispose()


def read_a_little_and_hang_up(server: LiveServer, path: str, token: str | None = None) -> bytes:
    url = urlparse(server.base_url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((url.hostname, url.port))
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\n{auth}\r\n".encode())
    got = b""
    while len(got) < 16_384:
        got += sock.recv(4096)
    time.sleep(0.5)  # the server is now blocked sending
    sock.close()
    return got


def send_half_and_hang_up(server: LiveServer, path: str, content_type: str, body: bytes) -> None:
    """POST half of ``body`` as a mapper, hang up, and wait until no session is left busy."""
    url = urlparse(server.base_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(
            (
                f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                f"Authorization: Bearer {server.tokens['mapper']}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body[: len(body) // 2]
        )
        time.sleep(0.5)  # the server is reading the body
    deadline = time.monotonic() + 15
    while busy_sessions(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert busy_sessions(server) == 0


@pytest.mark.parametrize(
    "path",
    [
        "/collections/structures/items?limit=10000",
        "/analysis/access?facility_type=water_point&max_distance_m=100&f=geojson",
        "/traces/{trace}/gpx",
        "/traces/{trace}/geojson",
        "/exports/structures?format=geojson",
    ],
)
def test_a_client_that_hangs_up_frees_its_connection(big_server: LiveServer, path: str) -> None:
    path = path.format(**BIG)
    head = read_a_little_and_hang_up(big_server, path, big_server.tokens["planner"])
    assert head.startswith(b"HTTP/1.1 200")
    deadline = time.monotonic() + 15  # liveness bound, not a speed target
    while busy_sessions(big_server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert busy_sessions(big_server) == 0
    # and the server goes on answering
    url = urlparse(big_server.base_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
        assert sock.recv(64).startswith(b"HTTP/1.1 200")


def test_an_upload_cut_off_midway_writes_nothing(live_server: LiveServer) -> None:
    """A phone that loses signal halfway through a GPX upload leaves no trace and no session."""
    points = "".join(
        f'<trkpt lat="{-1.313 + i * 1e-6:.7f}" lon="36.787"><time>2026-01-01T00:00:00Z</time>'
        "</trkpt>"
        for i in range(2000)
    )
    body = (
        '<?xml version="1.0"?><gpx version="1.1" creator="t" '
        f'xmlns="http://www.topografix.com/GPX/1/1"><trk><trkseg>{points}</trkseg></trk></gpx>'
    ).encode()
    send_half_and_hang_up(live_server, "/traces?name=cut-off-walk", "application/gpx+xml", body)
    engine = create_engine(live_server.database_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(
                text("SELECT count(*) FROM traces WHERE name = 'cut-off-walk'")
            ).scalar_one()
    finally:
        engine.dispose()
    assert stored == 0
    # the same bytes sent whole make a trace: the cut, not the file, stopped it
    whole = httpx.post(
        f"{live_server.base_url}/traces?name=whole-walk",
        content=body,
        headers={**live_server.headers("mapper"), "Content-Type": "application/gpx+xml"},
        timeout=60,
    )
    assert whole.status_code == 201, whole.text


def test_an_import_cut_off_midway_writes_nothing(live_server: LiveServer) -> None:
    """A multipart import whose client goes away halfway leaves no import, no feature, no file."""
    features = [
        {
            "type": "Feature",
            "properties": {"structure_number": f"CUT-{i}"},
            "geometry": {"type": "Point", "coordinates": [36.787, -1.313 + i * 1e-6]},
        }
        for i in range(20_000)
    ]
    data = json.dumps({"type": "FeatureCollection", "features": features}).encode()
    boundary = "cut-off-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="collection"\r\n\r\n'
            f'structures\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="cut.geojson"\r\nContent-Type: application/geo+json\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )

    def imports() -> int:
        engine = create_engine(live_server.database_url)
        try:
            with engine.connect() as conn:
                return int(
                    conn.execute(
                        text(
                            "SELECT (SELECT count(*) FROM imports) + (SELECT count(*) FROM "
                            "import_files) + (SELECT count(*) FROM structures WHERE "
                            "structure_number LIKE 'CUT-%')"
                        )
                    ).scalar_one()
                )
        finally:
            engine.dispose()

    before = imports()
    send_half_and_hang_up(
        live_server, "/imports", f"multipart/form-data; boundary={boundary}", body
    )
    assert imports() == before
