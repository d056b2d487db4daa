"""PostgreSQL stopped under load: 503 problem+json meanwhile, served again after, nothing half-done.

A real server on a cluster of its own (the session's cluster stays up for the
other tests) is driven by several client threads reading item pages and tiles
and writing structures, while its PostgreSQL is stopped (``pg_ctl stop -m
fast``) and started again. Every answer is recorded with the state of the
database when the request was sent and when its answer came back. Client
timeouts make a hang fail the test; nothing is timed.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from geo.core.cluster import EmbeddedCluster
from tests.support.live import LiveServer, live_server_running

CLIENTS = 6
TIMEOUT = httpx.Timeout(30.0)  # a request that hangs this long fails the test
PREFIX = "DOWN-"


@dataclass
class Answer:
    kind: str
    sent: str  # the database's state when the request was sent: up, down, restarted
    came: str  # ... and when its answer came back
    status: int
    content_type: str
    body: str
    retry_after: str | None
    number: str | None = None


class Phase:
    """The database's state, shared by the client threads."""

    def __init__(self) -> None:
        self.state = "up"
        self.stop = threading.Event()


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    cluster = EmbeddedCluster(tmp_path_factory.mktemp("down"), server_options={"fsync": "off"})
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def server(own_cluster: EmbeddedCluster) -> Iterator[LiveServer]:
    # no tile cache: every tile below is read from the database
    with live_server_running(
        own_cluster, structures=300, database="makazi_down", tile_cache_mb="0"
    ) as live:
        yield live


def _area(server: LiveServer) -> tuple[float, float, float, float]:
    (row,) = server.query(
        "SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) "
        "FROM (SELECT ST_Extent(geom) AS e FROM settlements) x"
    )
    return float(row[0]), float(row[1]), float(row[2]), float(row[3])


def _tile(lon: float, lat: float, z: int = 16) -> str:
    n = 1 << z
    x = int((lon + 180.0) / 360.0 * n)
    y = int((1.0 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2.0 * n)
    return f"/tiles/{z}/{x}/{y}.mvt"


def _client(
    server: LiveServer,
    area: tuple[float, float, float, float],
    phase: Phase,
    numbers: Iterator[int],
    answers: list[Answer],
) -> None:
    west, south, east, north = area
    mapper = server.headers("mapper")
    viewer = server.headers("viewer")
    with httpx.Client(base_url=server.base_url, timeout=TIMEOUT) as http:
        while not phase.stop.is_set():
            lon, lat = random.uniform(west, east), random.uniform(south, north)
            kind = random.choice(("items", "tile", "write"))
            sent = phase.state
            number = None
            if kind == "items":
                bbox = f"{lon - 0.003},{lat - 0.003},{lon + 0.003},{lat + 0.003}"
                response = http.get(
                    f"/collections/structures/items?bbox={bbox}&limit=50", headers=viewer
                )
            elif kind == "tile":
                response = http.get(_tile(lon, lat), headers=viewer)
            else:
                number = f"{PREFIX}{next(numbers)}"
                size = 0.00003
                ring = [
                    [lon, lat],
                    [lon + size, lat],
                    [lon + size, lat + size],
                    [lon, lat + size],
                    [lon, lat],
                ]
                feature = {
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": [ring]},
                    "properties": {"structure_number": number, "use": "residential"},
                }
                response = http.post(
                    "/collections/structures/items?force=true", json=feature, headers=mapper
                )
            answers.append(
                Answer(
                    kind=kind,
                    sent=sent,
                    came=phase.state,
                    status=response.status_code,
                    content_type=response.headers.get("content-type", ""),
                    body=response.text[:2000] if response.status_code >= 400 else "",
                    retry_after=response.headers.get("retry-after"),
                    number=number,
                )
            )


def _wait_for(
    answers: list[Answer], enough: object, what: str, failures: list[BaseException]
) -> None:
    """Wait until ``enough(answers)`` holds; fail (not hang) after a generous bound."""
    deadline = time.monotonic() + 120
    while not enough(answers):  # type: ignore[operator]
        if time.monotonic() > deadline or len(failures) == CLIENTS:
            kinds = sorted({(a.kind, a.sent, a.status) for a in answers})
            raise AssertionError(
                f"never saw {what}; answers so far: {kinds}; clients failed: {failures!r}"
            )
        time.sleep(0.1)


def test_database_stopped_under_load(server: LiveServer, own_cluster: EmbeddedCluster) -> None:
    area = _area(server)
    phase = Phase()
    answers: list[Answer] = []
    numbers = itertools.count()
    failures: list[BaseException] = []
    threads = [
        threading.Thread(target=_client, args=(server, area, phase, numbers, answers), daemon=True)
        for _ in range(CLIENTS)
    ]

    def guarded(thread: threading.Thread) -> threading.Thread:
        run = thread.run

        def run_and_keep() -> None:
            try:
                run()
            except BaseException as exc:  # a client timeout or a dropped connection
                failures.append(exc)

        thread.run = run_and_keep  # type: ignore[method-assign]
        return thread

    for thread in map(guarded, threads):
        thread.start()
    try:

        def served(kinds: set[str], state: str, count: int = 3) -> object:
            def check(seen: list[Answer]) -> bool:
                return all(
                    sum(1 for a in seen if a.kind == k and a.sent == state and a.status < 300)
                    >= count
                    for k in kinds
                )

            return check

        _wait_for(answers, served({"items", "tile", "write"}, "up"), "every kind served", failures)
        phase.state = "stopping"
        own_cluster.stop()
        phase.state = "down"
        _wait_for(
            answers,
            lambda seen: all(
                sum(1 for a in seen if a.kind == k and a.sent == "down") >= 5
                for k in ("items", "tile", "write")
            ),
            "five answers of each kind while the database was down",
            failures,
        )
        phase.state = "starting"
        own_cluster.start()
        phase.state = "restarted"
        _wait_for(
            answers, served({"items", "tile", "write"}, "restarted", 5), "served again", failures
        )
    finally:
        phase.stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not failures, f"a client failed (hang or dropped connection): {failures[:3]!r}"
    assert all(not thread.is_alive() for thread in threads)

    print(sorted(Counter((a.kind, a.sent, a.status) for a in answers).items()))  # with -s
    # never a 500 or any status but success or 503
    odd = [a for a in answers if a.status >= 300 and a.status != 503]
    assert not odd, [(a.kind, a.sent, a.status, a.body[:300]) for a in odd[:5]]
    unavailable = [a for a in answers if a.status == 503]
    assert unavailable, "no request met the stopped database"
    for answer in unavailable:
        assert answer.content_type.startswith("application/problem+json"), answer
        assert answer.retry_after is not None and answer.retry_after.isdigit(), answer
        assert "database" in answer.body and "Traceback" not in answer.body, answer.body
        assert "psycopg" not in answer.body and "SELECT" not in answer.body, answer.body
    # sent and answered while the database was down: every one a 503
    down = [a for a in answers if a.sent == "down" and a.came == "down"]
    assert down and all(a.status == 503 for a in down), sorted({(a.kind, a.status) for a in down})
    # after the restart, once every kind was served again, nothing failed any more
    restarted = [a for a in answers if a.sent == "restarted"]
    first_ok = {
        k: next(i for i, a in enumerate(restarted) if a.kind == k and a.status < 300)
        for k in ("items", "tile", "write")
    }
    after = restarted[max(first_ok.values()) + 1 :]
    assert after and all(a.status < 300 for a in after), [
        (a.kind, a.status, a.body[:200]) for a in after if a.status >= 300
    ]

    # no write half-done: each stored structure has its version-1 history, and every 201 is stored
    created = {a.number for a in answers if a.kind == "write" and a.status == 201}
    refused = {a.number for a in answers if a.kind == "write" and a.status == 503}
    rows = server.query(
        "SELECT s.structure_number, s.version, count(h.id) AS history "
        "FROM structures s LEFT JOIN feature_history h "
        "ON h.collection = 'structures' AND h.feature_id = s.id "
        "WHERE s.structure_number LIKE :p GROUP BY s.structure_number, s.version",
        p=f"{PREFIX}%",
    )
    stored = {row.structure_number for row in rows}
    assert created <= stored, sorted(created - stored)[:5]
    # a refused write may have committed just before its connection dropped, never half
    assert stored - created <= refused, sorted(stored - created - refused)[:5]
    assert all(row.version == 1 and row.history == 1 for row in rows), [
        tuple(row) for row in rows if row.version != 1 or row.history != 1
    ][:5]
