"""Read replicas: an embedded primary and a streaming replica (``makazi db replica``).

A replica whose replay is paused keeps an old view of the data, which shows from
outside which server answered a read: a change visible through the API came from
the primary, an old value from the replica.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from app.main import create_app
from geo.core.auth import create_token
from geo.core.cluster import EmbeddedCluster, ensure_postgis
from geo.core.db import Database, migrate
from geo.core.settings import Settings
from geo.core.standby import EmbeddedReplica, embedded_replicas
from geo.demo.generator import generate
from geo.demo.loader import load
from tests.conftest import FAST_SERVER
from tests.support.cli import makazi
from tests.support.server import makazi_on


class Pair:
    """The primary, its replica, and a token per role."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.primary = EmbeddedCluster(data_dir, server_options=FAST_SERVER)
        self.tokens: dict[str, str] = {}

    @property
    def replica(self) -> EmbeddedReplica:
        return embedded_replicas(self.primary)[0]

    def sql(self, statement: str, *, on_replica: bool = False) -> Any:
        """Run one statement (autocommit) on the primary or the replica; its first value."""
        url = self.replica.url() if on_replica else self.primary.url()
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                result = conn.execute(text(statement))
                return result.scalar() if result.returns_rows else None
        finally:
            engine.dispose()

    def settings(self, **values: Any) -> Settings:
        return Settings(
            database_url=self.primary.url(),
            database_replica_urls=[self.replica.url()],
            data_dir=self.data_dir,
            replica_check_s=0.2,
            **values,
        )

    def pause(self) -> None:
        self.sql("SELECT pg_wal_replay_pause()", on_replica=True)

    def resume(self) -> None:
        """Resume replay and wait until the replica has replayed all the primary wrote."""
        self.sql("SELECT pg_wal_replay_resume()", on_replica=True)
        target = self.sql("SELECT pg_current_wal_insert_lsn()::text")  # commits are async here
        wait_for(
            lambda: self.sql(
                f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn", on_replica=True
            )
        )


def wait_for(condition: Callable[[], Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    # Not under pytest's temporary root: every new pytest session on the machine takes the
    # others' access to /tmp/pytest-of-<user> away, and pg_basebackup runs as the service
    # user when the tests run as root.
    ensure_postgis(install=os.geteuid() == 0, quiet=True)
    made = Pair(Path(tempfile.mkdtemp(prefix="makazi-replicas-")))
    made.primary.start()
    try:
        migrate(made.primary.url())
        engine = create_engine(made.primary.url())
        with engine.begin() as conn:
            load(conn, generate(300, seed=5))
            for role in ("mapper", "viewer"):
                made.tokens[role] = create_token(conn, name=f"r-{role}", role=role)
        engine.dispose()
        added = makazi("db", "replica", "add", data_dir=made.data_dir)
        assert added.returncode == 0, added.stderr
        assert added.stdout.strip() == made.replica.url()
        # one commit replayed, so the replica knows the time of its last replayed commit
        made.sql("CREATE TABLE replayed (id int)")
        made.resume()
        yield made
    finally:
        for replica in embedded_replicas(made.primary):
            replica.stop()
        made.primary.stop()
        shutil.rmtree(made.data_dir, ignore_errors=True)


def bearer(pair: Pair, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {pair.tokens[role]}"}


def structure_id(pair: Pair) -> int:
    return int(pair.sql("SELECT min(id) FROM structures WHERE deleted_at IS NULL"))


def storeys(client: TestClient, fid: int, headers: dict[str, str]) -> Any:
    response = client.get(f"/collections/structures/items/{fid}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["properties"]["storeys"]


def set_storeys(client: TestClient, fid: int, value: int, headers: dict[str, str]) -> None:
    url = f"/collections/structures/items/{fid}"
    etag = client.get(url, headers=headers).headers["etag"]
    patch = {"properties": {"storeys": value}}
    answer = client.patch(url, json=patch, headers={**headers, "If-Match": etag})
    assert answer.status_code == 200, answer.text


@contextmanager
def serving(pair: Pair, **values: Any) -> Iterator[TestClient]:
    """The app on the pair with ``values`` as settings, once its replica counts as healthy."""
    with TestClient(create_app(pair.settings(**values))) as client:
        wait_for(lambda: replica_healthy(client))
        yield client


def replica_healthy(client: TestClient) -> bool:
    db: Database = client.app.state.db  # type: ignore[attr-defined]
    db.read_engine()  # starts the checks
    return all(state.healthy for state in db.replicas.states())


def test_replica_list_shows_a_running_replica_with_its_lag(pair: Pair) -> None:
    listed = makazi("db", "replica", "list", data_dir=pair.data_dir)
    assert listed.returncode == 0, listed.stderr
    number, url, state, lag = listed.stdout.split()
    assert (number, url, state) == ("1", pair.replica.url(), "running")
    assert float(lag) < 5
    assert pair.sql("SELECT pg_is_in_recovery()", on_replica=True) is True
    assert pair.sql("SELECT count(*) FROM structures", on_replica=True) >= 300


def test_db_status_lists_the_replicas_with_their_lag(pair: Pair) -> None:
    def status() -> dict[str, Any]:
        shown = makazi("db", "status", data_dir=pair.data_dir)
        assert shown.returncode == 0, shown.stderr
        report: dict[str, Any] = json.loads(shown.stdout)
        return report

    report = status()
    assert report["running"] is True and report["port"] == pair.primary.port
    (replica,) = report["replicas"]
    assert replica["number"] == 1 and replica["port"] == pair.replica.port
    assert replica["data_dir"] == str(pair.replica.pgdata)
    assert replica["running"] is True and replica["streaming"] is True
    assert replica["url"] == pair.replica.url()
    assert replica["lag_bytes"] >= 0 and replica["lag_s"] is not None
    pair.pause()
    try:
        pair.sql("INSERT INTO replayed VALUES (2)")  # one row: no autoanalyze commits later
        wait_for(lambda: status()["replicas"][0]["lag_bytes"] > 0)
        behind = status()["replicas"][0]
        assert behind["streaming"] is True and behind["lag_s"] > 0
    finally:
        pair.resume()
    wait_for(lambda: status()["replicas"][0]["lag_bytes"] == 0)


def test_reads_go_to_the_replica_and_the_writer_reads_its_write(pair: Pair) -> None:
    fid = structure_id(pair)
    mapper, viewer = bearer(pair, "mapper"), bearer(pair, "viewer")
    with serving(pair, replica_max_lag_s=3600, read_after_write_s=2) as client:
        before = storeys(client, fid, viewer)
        pair.pause()
        try:
            set_storeys(client, fid, (before or 0) + 3, mapper)
            # the writer reads from the primary for read_after_write_s ...
            assert storeys(client, fid, mapper) == (before or 0) + 3
            # ... everybody else from the paused replica, which has not seen the edit
            assert storeys(client, fid, viewer) == before
            time.sleep(2.2)
            assert storeys(client, fid, mapper) == before
        finally:
            pair.resume()
        assert storeys(client, fid, viewer) == (before or 0) + 3


def test_a_replica_lagging_too_far_is_skipped(pair: Pair) -> None:
    fid = structure_id(pair)
    mapper, viewer = bearer(pair, "mapper"), bearer(pair, "viewer")
    with serving(pair, replica_max_lag_s=1, read_after_write_s=0) as client:
        before = storeys(client, fid, viewer)
        pair.pause()
        try:
            set_storeys(client, fid, (before or 0) + 1, mapper)
            wait_for(lambda: not replica_healthy(client))
            db: Database = client.app.state.db  # type: ignore[attr-defined]
            assert "MAKAZI_REPLICA_MAX_LAG_S" in db.replicas.states()[0].error
            # the primary answers while the replica lags
            assert storeys(client, fid, viewer) == (before or 0) + 1
        finally:
            pair.resume()
        wait_for(lambda: replica_healthy(client))


def test_an_idle_primary_is_not_lag(pair: Pair) -> None:
    # nothing committed for longer than the limit: the age of the replica's last replayed
    # commit grows, yet it has everything, so it stays in use
    with serving(pair, replica_max_lag_s=1) as client:
        pair.sql("CREATE TABLE IF NOT EXISTS replayed (id int)")
        pair.sql("INSERT INTO replayed VALUES (1)")
        pair.resume()
        time.sleep(2.5)
        age = pair.sql(
            "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())", on_replica=True
        )
        assert age > 1
        db: Database = client.app.state.db  # type: ignore[attr-defined]
        db.replicas.check()
        state = db.replicas.states()[0]
        assert state.healthy and state.lag_s == 0.0, state


def test_tiles_drawn_on_a_lagging_replica_are_not_cached_as_new(pair: Pair) -> None:
    # the change feed (from the primary) moves the counters before the replica has the edit;
    # a tile drawn there must not be kept under the new counters
    fid = structure_id(pair)
    x, y = pair.sql(
        "SELECT concat_ws(',', floor((ST_X(c) + 180) / 360 * 65536)::int, "
        "floor((1 - ln(tan(radians(ST_Y(c))) + 1 / cos(radians(ST_Y(c)))) / pi())"
        " / 2 * 65536)::int)"
        f" FROM (SELECT ST_Centroid(geom) AS c FROM structures WHERE id = {fid}) s"
    ).split(",")
    url = f"/tiles/16/{x}/{y}.mvt"
    mapper = bearer(pair, "mapper")
    with serving(pair, replica_max_lag_s=3600, read_after_write_s=0) as client:
        feed = client.app.state.change_feed  # type: ignore[attr-defined]
        wait_for(lambda: feed.counters() is not None)
        first = client.get(url)
        assert first.status_code == 200
        before = storeys(client, fid, mapper)
        pair.pause()
        try:
            counters = feed.counters()
            set_storeys(client, fid, (before or 0) + 5, mapper)
            wait_for(lambda: feed.counters() != counters)
            stale = client.get(url)
            assert stale.headers["etag"] == first.headers["etag"]  # the replica's view
        finally:
            pair.resume()
        fresh = client.get(url)
        assert fresh.headers["etag"] != first.headers["etag"]
        db: Database = client.app.state.db  # type: ignore[attr-defined]
        assert db.replicas.states()[0].healthy  # drawn on the replica, once caught up
    # the same tile drawn on the primary alone: the replica's is the new one, not a cached one
    primary_only = Settings(database_url=pair.primary.url(), data_dir=pair.data_dir)
    with TestClient(create_app(primary_only)) as alone:
        truth = alone.get(url)
    assert truth.status_code == 200
    assert (fresh.headers["etag"], fresh.content) == (truth.headers["etag"], truth.content)


def test_stopping_the_replica_loses_no_request(pair: Pair) -> None:
    ids = [
        int(v) for v in str(pair.sql("SELECT string_agg(id::text, ',') FROM structures")).split(",")
    ]
    answers: list[int] = []
    errors: list[str] = []
    stop = threading.Event()
    replica_url = pair.replica.url()
    with makazi_on(
        pair.primary.url(), database_replica_urls=replica_url, replica_check_s="0.2"
    ) as (base, _):

        def reads(offset: int) -> None:
            with httpx.Client(base_url=base, timeout=30) as http:
                n = offset
                while not stop.is_set():
                    path = f"/collections/structures/items/{ids[n % len(ids)]}"
                    try:
                        answers.append(http.get(path if n % 5 else "/healthz").status_code)
                    except httpx.HTTPError as exc:
                        errors.append(repr(exc))
                    n += 7

        threads = [threading.Thread(target=reads, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        try:
            wait_for(
                lambda: (
                    pair.sql(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'makazi'",
                        on_replica=True,
                    )
                    > 0
                )
            )
            served = len(answers)
            pair.replica.stop()
            time.sleep(1.5)
            assert len(answers) > served  # reads went on, now from the primary
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            pair.replica.start()
    assert not errors
    assert answers and set(answers) == {200}


def test_replica_remove_deletes_it(pair: Pair) -> None:
    added = makazi("db", "replica", "add", data_dir=pair.data_dir)
    assert added.returncode == 0, added.stderr
    second = embedded_replicas(pair.primary)[-1]
    assert second.number == 2 and second.running()
    removed = makazi("db", "replica", "remove", "2", data_dir=pair.data_dir)
    assert removed.returncode == 0, removed.stderr
    assert not second.pgdata.exists() and not second.running()
    assert pair.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE '%_2'") == 0
    assert [r.number for r in embedded_replicas(pair.primary)] == [1]
    bad = makazi("db", "replica", "remove", "9", data_dir=pair.data_dir)
    assert bad.returncode != 0 and "no replica 9" in bad.stderr


def test_failover_promoted_replica_takes_writes_without_an_app_restart(pair: Pair) -> None:
    # last in this module: it stops the primary for good
    added = makazi("db", "replica", "add", data_dir=pair.data_dir)
    assert added.returncode == 0, added.stderr
    standby = embedded_replicas(pair.primary)[-1]
    password = pair.primary.password
    both = (
        f"postgresql://makazi:{password}@/makazi?host=127.0.0.1:{pair.primary.port}"
        f"&host=127.0.0.1:{standby.port}&target_session_attrs=read-write"
    )
    fid = structure_id(pair)
    mapper = bearer(pair, "mapper")
    with makazi_on(both) as (base, process), httpx.Client(base_url=base, timeout=30) as http:

        def edit(value: int) -> int:
            url = f"/collections/structures/items/{fid}"
            current = http.get(url, headers=mapper)
            if current.status_code != 200:
                return current.status_code
            answer = http.patch(
                url,
                json={"properties": {"storeys": value}},
                headers={**mapper, "If-Match": current.headers["etag"]},
            )
            return answer.status_code

        assert edit(11) == 200
        pair.primary.stop()
        engine = create_engine(standby.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_promote()")).scalar() is True
        engine.dispose()
        statuses: list[int] = []
        deadline = time.monotonic() + 30
        while not statuses or statuses[-1] != 200:
            assert time.monotonic() < deadline, statuses
            statuses.append(edit(12))
            time.sleep(0.2)
        assert set(statuses) <= {200, 503}  # a dead pooled connection costs a 503, never a 500
        assert process.poll() is None  # the same server process
        item = http.get(f"/collections/structures/items/{fid}", headers=mapper)
        assert item.json()["properties"]["storeys"] == 12
    engine = create_engine(standby.url())
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pg_is_in_recovery()")).scalar() is False
    engine.dispose()
