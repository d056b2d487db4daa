"""``kill -9`` of the server in the middle of an import: nothing half-written, the job re-runs.

Two imports of 10,000 footprints are cut short by SIGKILL of the whole server
process (uvicorn, with its in-process import worker): one imported in the
request, one queued. Afterwards the database holds no feature of either and
no stored answer for the request's ``Idempotency-Key``; a new server on the
same database then imports the first when the client retries with the same
key, and its worker picks the orphaned queued job up again by itself.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text

from geo.core.auth import create_token
from geo.core.cluster import EmbeddedCluster
from geo.core.db import migrate
from tests.imports.helpers import footprints, make_settlement
from tests.support.server import makazi_on

DATABASE = "makazi_app_killed"
FEATURES = 10_000
SETTINGS = {
    "import_stale_s": "3",
    "import_poll_s": "0.5",
    "import_batch_size": "500",
    "import_async_mb": "64",  # only the import asked to be queued is queued
}


@pytest.fixture(scope="module")
def database(cluster: EmbeddedCluster) -> Iterator[tuple[str, Engine, str]]:
    url = cluster.create_database(DATABASE, drop=True)
    migrate(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        make_settlement(conn)
        token = create_token(conn, name="killed-mapper", role="mapper")
    try:
        yield url, engine, token
    finally:
        engine.dispose()
        cluster.drop_database(DATABASE)


def _file(tmp_path: Path, prefix: str) -> bytes:
    frame = footprints(FEATURES, y0=-1.30)
    frame["Structure_Number"] = [f"{prefix}-{i:05d}" for i in range(FEATURES)]
    path = tmp_path / f"{prefix}.geojson"
    frame.to_file(path, driver="GeoJSON")
    return path.read_bytes()


def _count(engine: Engine, sql: str, **params: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def _wait(engine: Engine, sql: str, what: str, at_least: int = 1, **params: object) -> None:
    """Poll until ``sql`` counts ``at_least``; fail (not hang) after a generous bound."""
    deadline = time.monotonic() + 120
    while _count(engine, sql, **params) < at_least:
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.05)


def _post(base: str, token: str, data: bytes, key: str, **form: str) -> httpx.Response:
    return httpx.post(
        f"{base}/imports",
        files={"file": ("f.geojson", data, "application/geo+json")},
        data={"collection": "structures", **form},
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key},
        timeout=300,
    )


WRITING = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name = 'makazi' AND state = 'active' AND query ILIKE '%structures%'"
)


def test_server_killed_mid_import(database: tuple[str, Engine, str], tmp_path: Path) -> None:
    url, engine, token = database
    in_request = _file(tmp_path, "KILLED")
    queued = _file(tmp_path, "QUEUED")
    answers: list[object] = []
    with makazi_on(url, **SETTINGS) as (base, process):
        # the queued import first: it waits for the in-process worker
        accepted = _post(base, token, queued, "queued-1", **{"async": "true"})
        assert accepted.status_code == 202, accepted.text
        queued_id = accepted.json()["id"]
        _wait(
            engine,
            "SELECT count(*) FROM imports WHERE id = :i AND status = 'running'",
            "the queued import running",
            i=queued_id,
        )

        sender = threading.Thread(
            target=lambda: answers.append(_try_post(base, token, in_request, "in-request-1"))
        )
        sender.start()
        _wait(engine, WRITING, "the worker and the request both writing", at_least=2)
        time.sleep(0.3)  # well inside both imports of 10,000 features
        process.send_signal(signal.SIGKILL)
        process.wait()
        sender.join(timeout=60)
    assert answers and isinstance(answers[0], httpx.HTTPError), answers  # the client saw it die

    # nothing half-written: PostgreSQL rolled back both transactions of the dead server
    deadline = time.monotonic() + 30
    while _count(
        engine, WRITING.replace("state = 'active' AND query ILIKE '%structures%'", "true")
    ):
        assert time.monotonic() < deadline, "the dead server's sessions never ended"
        time.sleep(0.1)
    assert (
        _count(engine, "SELECT count(*) FROM structures WHERE structure_number LIKE 'KILLED-%'")
        == 0
    )
    assert (
        _count(engine, "SELECT count(*) FROM structures WHERE structure_number LIKE 'QUEUED-%'")
        == 0
    )
    assert _count(engine, "SELECT count(*) FROM idempotency_keys WHERE key = 'in-request-1'") == 0
    assert (
        _count(
            engine, "SELECT count(*) FROM imports WHERE id = :i AND status = 'running'", i=queued_id
        )
        == 1
    )

    # re-runnable: a new server imports the retried request and picks the orphaned job up
    with makazi_on(url, **SETTINGS) as (base, _process):
        retried = _post(base, token, in_request, "in-request-1")
        assert retried.status_code == 201, retried.text
        assert retried.json()["imported"] == FEATURES
        _wait(
            engine,
            "SELECT count(*) FROM imports WHERE id = :i AND status = 'done'",
            "the orphaned job done",
            i=queued_id,
        )
    assert (
        _count(engine, "SELECT count(*) FROM structures WHERE structure_number LIKE 'KILLED-%'")
        == FEATURES
    )
    assert (
        _count(engine, "SELECT count(*) FROM structures WHERE structure_number LIKE 'QUEUED-%'")
        == FEATURES
    )
    assert _count(engine, "SELECT attempts FROM imports WHERE id = :i", i=queued_id) == 2


def _try_post(base: str, token: str, data: bytes, key: str) -> object:
    try:
        return _post(base, token, data, key)
    except httpx.HTTPError as exc:
        return exc
