"""The HA recipe: pg_auto_failover (Debian's ``postgresql-N-auto-failover``) on loopback.

A monitor and two data nodes; the app runs under uvicorn on the multi-host URL
``pg_autoctl show uri --formation default`` gives (plus the app's role).  While
readers and a writer keep calling it, ``pg_autoctl perform failover`` makes the
standby the primary: the same server process then serves reads and writes again,
and every request during the switch got an answer or a 503 problem+json, never a 500.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine

from geo.core.auth import create_token
from geo.core.cluster import find_postgres
from geo.core.db import migrate, normalise_url
from geo.demo.generator import generate
from geo.demo.loader import load
from tests.support.autofailover import APP_USER, Formation, autoctl_missing, wait_until
from tests.support.server import makazi_on

PG = find_postgres()
MISSING = autoctl_missing(PG) if PG is not None else "PostgreSQL is not installed"

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


@pytest.fixture(scope="module")
def formation() -> Iterator[tuple[Formation, str, str]]:
    """A running formation, node1 primary and node2 secondary: (formation, app URL, token)."""
    # not under pytest's temporary root, which other sessions lock down (see test_replicas)
    assert PG is not None
    made = Formation(Path(tempfile.mkdtemp(prefix="makazi-autofailover-")), PG)
    try:
        made.start_monitor()
        made.add_node("node1")
        made.wait_for_states({"node1": "single"})
        # pg_basebackup of the next node waits for a checkpoint: not a spread one here
        made.psql("node1", "ALTER SYSTEM SET checkpoint_completion_target = 0")
        made.psql("node1", "SELECT pg_reload_conf()")
        made.psql("node1", f"CREATE ROLE {APP_USER} LOGIN SUPERUSER")
        made.psql("node1", "CREATE EXTENSION IF NOT EXISTS postgis")
        formation_uri = made.uri()
        assert formation_uri.count(",") == 0  # one node so far
        made.add_node("node2")
        made.wait_for_states({"node1": "primary", "node2": "secondary"})
        uri = made.uri()
        assert "target_session_attrs=read-write" in uri and uri.count(",") == 1, uri
        url = uri.replace("postgres://", f"postgres://{APP_USER}@", 1)
        migrate(normalise_url(url))
        engine = create_engine(normalise_url(url))
        with engine.begin() as conn:
            load(conn, generate(40, seed=3))
            token = create_token(conn, name="ha-mapper", role="mapper")
        engine.dispose()
        yield made, url, token
    finally:
        made.stop()
        shutil.rmtree(made.root, ignore_errors=True)


def test_failover_app_serves_reads_and_writes_again_without_a_restart(
    formation: tuple[Formation, str, str],
) -> None:
    made, url, token = formation
    mapper = {"Authorization": f"Bearer {token}"}
    seen: list[tuple[str, int, str]] = []  # (kind, status, content type)
    broken: list[str] = []  # answers cut off or never given
    stop = threading.Event()
    with makazi_on(url) as (base, process), httpx.Client(base_url=base, timeout=30) as http:
        fid = http.get("/collections/structures/items?limit=1").json()["features"][0]["id"]
        item = f"/collections/structures/items/{fid}"

        def edit(value: int) -> int:
            current = http.get(item, headers=mapper)
            seen.append(("read", current.status_code, current.headers.get("content-type", "")))
            if current.status_code != 200:
                return current.status_code
            answer = http.patch(
                item,
                json={"properties": {"storeys": value}},
                headers={**mapper, "If-Match": current.headers["etag"]},
            )
            seen.append(("write", answer.status_code, answer.headers.get("content-type", "")))
            return answer.status_code

        def reader() -> None:
            with httpx.Client(base_url=base, timeout=30) as own:
                while not stop.is_set():
                    try:
                        answer = own.get("/collections/structures/items?limit=40")
                    except httpx.HTTPError as exc:
                        broken.append(repr(exc))
                        continue
                    seen.append(
                        ("read", answer.status_code, answer.headers.get("content-type", ""))
                    )
                    time.sleep(0.02)

        def writer() -> None:
            value = 1
            while not stop.is_set():
                try:
                    edit(value % 9 + 1)
                except httpx.HTTPError as exc:
                    broken.append(repr(exc))
                value += 1
                time.sleep(0.1)

        assert edit(5) == 200
        threads = [threading.Thread(target=reader) for _ in range(2)]
        threads.append(threading.Thread(target=writer))
        for thread in threads:
            thread.start()
        try:
            before = len(seen)
            made.autoctl("perform", "failover", "--pgdata", str(made.pgdata("monitor")))
            made.wait_for_states({"node2": "primary", "node1": "secondary"})
            time.sleep(1)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        # the app finds the new primary by itself: a write and a read go through again
        wait_until(lambda: edit(7) == 200, 60, lambda: f"answers: {seen[before:][-10:]}")
        assert process.poll() is None  # the same server process all along
        read = http.get(item, headers=mapper)
        assert read.status_code == 200 and read.json()["properties"]["storeys"] == 7
    assert made.psql("node2", "SELECT pg_is_in_recovery()") == "f"
    assert made.psql("node1", "SELECT pg_is_in_recovery()") == "t"
    assert not broken, broken
    during = seen[before:]
    print("answers during the switch:", Counter((kind, status) for kind, status, _ in during))
    assert {kind for kind, _, _ in during} == {"read", "write"}
    assert {status for _, status, _ in during} <= {200, 503}, during
    assert all(kind == "application/problem+json" for _, status, kind in during if status == 503)
