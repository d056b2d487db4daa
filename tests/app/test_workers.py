"""Two worker processes (uvicorn ``--workers 2``): an edit or a revocation handled by
one reaches the other's caches through the change feed, and a write (API or plain
SQL) makes both workers' next cached analysis answers fresh.

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

from geo.core.answers import AnswerCache
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


def bodies(server: LiveServer, path: str, headers: dict[str, str]) -> list[dict[str, object]]:
    """The distinct JSON bodies of ROUNDS // 4 requests, each on a new connection (a stale
    answer in either worker shows as a second body)."""
    seen: list[dict[str, object]] = []
    for _ in range(ROUNDS // 4):
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            response = http.get(path, headers=headers)
            assert response.status_code == 200, response.text
            if response.json() not in seen:
                seen.append(response.json())
    return seen


def test_a_household_written_in_sql_makes_both_workers_summaries_fresh(
    two_workers: LiveServer,
) -> None:
    settlement, household = two_workers.query(
        "SELECT s.id, h.id FROM settlements s JOIN structures t "
        "ON ST_Within(t.geom, s.geom) AND t.deleted_at IS NULL "
        "JOIN households h ON h.structure_id = t.id AND h.deleted_at IS NULL "
        "WHERE s.deleted_at IS NULL ORDER BY s.id, h.id LIMIT 1"
    )[0]
    path = f"/settlements/{settlement}/summary"
    planner = two_workers.headers("planner")
    before = bodies(two_workers, path, planner)
    assert len(before) == 1  # every answer, cached or not, is the same
    engine = create_engine(two_workers.database_url)
    with engine.begin() as conn:
        # members only: the structure's household count, its version and the tiles stay
        conn.execute(
            text("UPDATE households SET members = members + 5 WHERE id = :id"), {"id": household}
        )
    engine.dispose()
    after = bodies(two_workers, path, planner)
    assert len(after) == 1
    assert after[0]["people"] == before[0]["people"] + 5  # type: ignore[operator]


def test_a_facility_edited_through_the_api_makes_both_workers_access_fresh(
    two_workers: LiveServer,
) -> None:
    settlement, facility = two_workers.query(
        "SELECT s.id, f.id FROM settlements s JOIN facilities f ON ST_Intersects(f.geom, s.geom) "
        "WHERE f.type = 'water_point' AND f.deleted_at IS NULL AND s.deleted_at IS NULL "
        "AND f.condition IS DISTINCT FROM 'broken' ORDER BY s.id, f.id LIMIT 1"
    )[0]
    path = (
        f"/analysis/access?facility_type=water_point&max_distance_m=100&settlement_id={settlement}"
    )
    planner = two_workers.headers("planner")
    before = bodies(two_workers, path, planner)
    assert len(before) == 1
    mapper = two_workers.headers("mapper")
    url = f"{two_workers.base_url}/collections/facilities/items/{facility}"
    current = httpx.get(url, headers=mapper)
    edited = httpx.patch(
        url,
        json={"properties": {"condition": "broken"}},
        headers={**mapper, "If-Match": current.headers["etag"]},
    )
    assert edited.status_code == 200, edited.text
    after = bodies(two_workers, path, planner)
    assert len(after) == 1
    considered = before[0]["facilities_considered"]
    assert after[0]["facilities_considered"] == considered - 1  # type: ignore[operator]


def test_the_answer_cache_answers_again_until_a_commit(two_workers: LiveServer) -> None:
    cache = AnswerCache(entries=8)
    statement = text("SELECT json_build_object('n', count(*))::text FROM households")
    engine = create_engine(two_workers.database_url)
    try:
        with engine.connect() as conn:
            first = cache.fetch(conn, statement, {})
            assert cache.fetch(conn, statement, {}) == first
        assert (cache.hits, cache.misses) == (1, 1)
        structure = two_workers.query("SELECT min(id) FROM structures")[0][0]
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO households (structure_id, members) VALUES (:s, 2)"),
                {"s": structure},
            )
        with engine.connect() as conn:
            assert cache.fetch(conn, statement, {}) == {"n": first["n"] + 1}
        assert (cache.hits, cache.misses) == (1, 2)
    finally:
        engine.dispose()
