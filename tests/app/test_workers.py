"""Two worker processes (uvicorn ``--workers 2``): an edit or a revocation handled by
one reaches the other's caches through the change feed.

Every request opens a new connection, so the kernel spreads them over both
workers; forty in a row are all answered the same way only when both workers'
caches agree.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import create_engine, text

from geo.core.auth import revoke_token
from geo.core.cluster import EmbeddedCluster
from tests.support.live import LiveServer, live_server_running

ROUNDS = 40


@pytest.fixture(scope="module")
def two_workers(cluster: EmbeddedCluster) -> Iterator[LiveServer]:
    with live_server_running(
        cluster,
        structures=300,
        database="makazi_workers",
        workers=2,
        token_failures_per_minute="1000",  # forty refusals in a row are the point here
    ) as server:
        yield server


def answers(server: LiveServer, path: str, headers: dict[str, str] | None = None) -> set[str]:
    """The distinct (status, ETag) of ROUNDS requests, each on a new connection."""
    seen = set()
    for _ in range(ROUNDS):
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            response = http.get(path, headers=headers or {})
            seen.add(f"{response.status_code} {response.headers.get('etag', '')}")
    return seen


def test_an_edit_in_one_worker_changes_the_tile_in_both(two_workers: LiveServer) -> None:
    engine = create_engine(two_workers.database_url)
    with engine.connect() as conn:
        fid, x, y = conn.execute(
            text(
                "SELECT id, floor((ST_X(c) + 180) / 360 * 65536)::int, "
                "floor((1 - ln(tan(radians(ST_Y(c))) + 1 / cos(radians(ST_Y(c)))) / pi())"
                " / 2 * 65536)::int "
                "FROM (SELECT id, ST_Centroid(geom) AS c FROM structures "
                "WHERE deleted_at IS NULL ORDER BY id LIMIT 1) s"
            )
        ).one()
    engine.dispose()
    tile = f"/tiles/16/{x}/{y}.mvt"
    before = answers(two_workers, tile)
    assert len(before) == 1 and next(iter(before)).startswith("200 ")
    mapper = two_workers.headers("mapper")
    url = f"{two_workers.base_url}/collections/structures/items/{fid}"
    current = httpx.get(url, headers=mapper)
    storeys = (current.json()["properties"]["storeys"] or 0) + 7
    edited = httpx.patch(
        url,
        json={"properties": {"storeys": storeys}},
        headers={**mapper, "If-Match": current.headers["etag"]},
    )
    assert edited.status_code == 200, edited.text
    time.sleep(0.5)  # the other worker hears of the commit through its LISTEN connection
    after = answers(two_workers, tile)
    assert len(after) == 1 and after != before


def test_a_revoked_token_stops_working_in_both_workers(two_workers: LiveServer) -> None:
    viewer = two_workers.headers("viewer")
    assert {a.split()[0] for a in answers(two_workers, "/collections", viewer)} == {"200"}
    engine = create_engine(two_workers.database_url)
    with engine.begin() as conn:
        revoke_token(conn, name="live-viewer")
    engine.dispose()
    time.sleep(0.5)
    assert {a.split()[0] for a in answers(two_workers, "/collections", viewer)} == {"401"}
