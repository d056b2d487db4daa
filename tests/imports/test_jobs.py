"""Queued imports: 202 + Location, a worker runs them, a dead worker's job is retried."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, create_engine, text

from app.main import create_app
from geo.core.auth import create_token
from geo.core.cluster import EmbeddedCluster
from geo.core.db import Database, migrate
from geo.core.settings import Settings
from geo.core.uploads import spool_stream
from geo.imports.jobs import claim, create_import, run_next, store_file
from geo.imports.pipeline import ImportOptions
from tests.imports.helpers import count_rows, footprints, make_settlement, post_import
from tests.support.db import BoundDatabase

Headers = Callable[..., dict[str, str]]


def test_async_import_is_queued_then_run(
    client: TestClient,
    token_for: Headers,
    connection: Connection,
    db: BoundDatabase,
    settings: Settings,
    tmp_path: Path,
) -> None:
    settlement = make_settlement(connection)
    path = tmp_path / "f.geojson"
    footprints(4).to_file(path, driver="GeoJSON")
    mapper = token_for("mapper")
    response = post_import(client, path, mapper, collection="structures", **{"async": True})
    assert response.status_code == 202, response.text
    location = response.headers["location"]
    assert client.get(location, headers=mapper).json()["status"] == "queued"
    assert count_rows(connection, "structures", f"settlement_id = {settlement}") == 0

    assert run_next(db, settings) == response.json()["id"]
    done = client.get(location, headers=mapper).json()
    assert (done["status"], done["progress"], done["report"]["imported"]) == ("done", 1.0, 4)
    assert count_rows(connection, "structures", f"settlement_id = {settlement}") == 4
    stored = connection.execute(
        text("SELECT count(*) FROM import_files WHERE import_id = :i"), {"i": done["id"]}
    ).scalar_one()
    assert stored == 0  # the upload goes once the import is done
    assert run_next(db, settings) is None


def test_failed_job_keeps_the_report(
    client: TestClient, token_for: Headers, db: BoundDatabase, settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "f.geojson"
    footprints(2).to_file(path, driver="GeoJSON")
    mapper = token_for("mapper")
    response = post_import(
        client, path, mapper, collection="settlements", **{"async": True}
    )  # settlements need a name and polygons: every feature is bad
    run_next(db, settings)
    failed = client.get(response.headers["location"], headers=mapper).json()
    assert failed["status"] == "failed"
    assert failed["report"]["status"] == 422
    assert failed["report"]["rejected"] == 2


def test_dead_workers_job_is_retried(
    client: TestClient,
    token_for: Headers,
    connection: Connection,
    db: BoundDatabase,
    settings: Settings,
    tmp_path: Path,
) -> None:
    settlement = make_settlement(connection)
    path = tmp_path / "f.geojson"
    footprints(3).to_file(path, driver="GeoJSON")
    mapper = token_for("mapper")
    import_id = post_import(
        client, path, mapper, collection="structures", **{"async": True}
    ).json()["id"]
    job = claim(connection, worker="died", stale_s=60, max_attempts=3)
    assert job is not None and job.id == import_id
    assert claim(connection, worker="other", stale_s=60, max_attempts=3) is None  # still fresh
    connection.execute(
        text("UPDATE imports SET heartbeat_at = now() - interval '5 minutes' WHERE id = :i"),
        {"i": import_id},
    )
    assert run_next(db, settings, worker="rescuer") == import_id
    status = client.get(f"/imports/{import_id}", headers=mapper).json()
    assert (status["status"], status["attempts"]) == ("done", 2)
    assert count_rows(connection, "structures", f"settlement_id = {settlement}") == 3


@pytest.fixture
def committed(cluster: EmbeddedCluster, settings: Settings) -> Iterator[Settings]:
    """Settings on a database of its own, where writes really commit (worker threads see them)."""
    url = cluster.create_database("makazi_import_jobs", drop=True)
    migrate(url)
    yield settings.model_copy(
        update={
            "database_url": url,
            "import_poll_s": 0.1,
            "import_stale_s": 2.0,
            "tile_change_feed": False,
        }
    )


def test_worker_in_the_server_runs_queued_and_orphaned_jobs(
    committed: Settings, tmp_path: Path
) -> None:
    engine = create_engine(committed.database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        token = create_token(conn, name="wambui", role="mapper")
        make_settlement(conn)
        # A job whose worker died half-way (a stale heartbeat), as a restart finds it;
        # its footprints lie outside the settlement, so their numbers do not clash.
        path = tmp_path / "orphan.geojson"
        footprints(2, y0=-1.29).to_file(path, driver="GeoJSON")
        with path.open("rb") as handle:
            body = spool_stream(handle, limit=10_000_000)
        orphan = create_import(
            conn,
            owner="wambui",
            options=ImportOptions("structures"),
            body=body,
            filename=path.name,
            status="running",
        )
        store_file(conn, orphan, body)
        conn.execute(
            text(
                "UPDATE imports SET attempts = 1, heartbeat_at = now() - interval '1 hour' "
                "WHERE id = :i"
            ),
            {"i": orphan},
        )
    headers = {"Authorization": f"Bearer {token}"}
    path = tmp_path / "queued.geojson"
    footprints(5).to_file(path, driver="GeoJSON")
    with TestClient(create_app(committed)) as client:
        response = post_import(client, path, headers, collection="structures", **{"async": True})
        assert response.status_code == 202, response.text
        deadline = time.monotonic() + 60
        states: dict[int, str] = {}
        while time.monotonic() < deadline:
            states = {
                i: client.get(f"/imports/{i}", headers=headers).json()["status"]
                for i in (orphan, response.json()["id"])
            }
            if set(states.values()) <= {"done", "failed"}:
                break
            time.sleep(0.2)
        assert states == {orphan: "done", response.json()["id"]: "done"}
    with engine.connect() as conn:
        assert count_rows(conn, "structures") == 7
    engine.dispose()


KILLABLE_WORKER = """
import sys
from geo.core.db import Database
from geo.core.settings import Settings
from geo.imports.jobs import run_next

settings = Settings(database_url=sys.argv[1], import_batch_size=500)
run_next(Database.from_settings(settings), settings, worker="doomed")
"""


def test_worker_killed_mid_import_is_retried(committed: Settings, tmp_path: Path) -> None:
    engine = create_engine(committed.database_url.replace("postgresql://", "postgresql+psycopg://"))
    path = tmp_path / "many.geojson"
    footprints(20_000, y0=-1.28).to_file(path, driver="GeoJSON")
    with engine.begin() as conn, path.open("rb") as handle:
        body = spool_stream(handle, limit=100_000_000)
        import_id = create_import(
            conn,
            owner="kibet",
            options=ImportOptions("structures"),
            body=body,
            filename=path.name,
            status="queued",
        )
        store_file(conn, import_id, body)
    worker = subprocess.Popen(
        [sys.executable, "-c", KILLABLE_WORKER, committed.database_url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        status = "queued"
        while time.monotonic() < deadline and status == "queued":
            with engine.connect() as conn:
                status = conn.execute(
                    text("SELECT status FROM imports WHERE id = :i"), {"i": import_id}
                ).scalar_one()
            time.sleep(0.05)
        assert status == "running"
        time.sleep(0.5)  # well inside the import of 20,000 features
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    with engine.connect() as conn:
        assert (
            count_rows(conn, "structures", f"import_id = {import_id}") == 0
        )  # nothing half-written
    time.sleep(committed.import_stale_s + 0.5)  # its heartbeat goes stale
    with engine.connect() as conn:
        status_now = conn.execute(
            text("SELECT status, worker FROM imports WHERE id = :i"), {"i": import_id}
        ).one()
    assert tuple(status_now) == ("running", "doomed")
    assert run_next(Database.from_settings(committed), committed, worker="rescuer") == import_id
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT status, attempts, worker, report FROM imports WHERE id = :i"),
            {"i": import_id},
        ).one()
        assert (row.status, row.attempts, row.worker) == ("done", 2, "rescuer")
        assert row.report["imported"] == 20_000
        assert count_rows(conn, "structures", f"import_id = {import_id}") == 20_000
    engine.dispose()


def test_large_uploads_are_queued_and_keys_replay(
    app_settings: Settings,
    db: BoundDatabase,
    connection: Connection,
    token_for: Headers,
    tmp_path: Path,
) -> None:
    settings = app_settings.model_copy(update={"import_async_mb": 0})  # every file is "large"
    path = tmp_path / "f.geojson"
    footprints(2).to_file(path, driver="GeoJSON")
    headers = {**token_for("mapper"), "Idempotency-Key": "queued-1"}
    with TestClient(create_app(settings, database=db), raise_server_exceptions=False) as client:
        first = post_import(client, path, headers, collection="structures")
        again = post_import(client, path, headers, collection="structures")
        dry = post_import(client, path, token_for("mapper"), collection="structures", dry_run=True)
    assert first.status_code == 202, first.text
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json()["id"] == first.json()["id"]
    assert dry.status_code == 200  # a dry run always answers at once
    queued = connection.execute(text("SELECT count(*) FROM imports WHERE status = 'queued'"))
    assert queued.scalar_one() == 1
