"""A full disk during an upload or import: a clean 507, nothing written, the spool emptied.

The server's staging area (``MAKAZI_SPOOL_DIR``: spooled bodies past 4 MB,
unpacked archives) is a 2 MB tmpfs. An import or trace larger than that is
refused with ``507 insufficient-storage`` problem+json naming the cause; no
import, structure or trace row is left behind, the tmpfs is empty again, and
the same server then imports a small file as usual.
"""

from __future__ import annotations

import io
import os
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from geo.core.cluster import EmbeddedCluster
from tests.support.cli import makazi
from tests.support.features import squares
from tests.support.live import LiveServer, live_server_running

STAGING_MB = 2


@pytest.fixture(scope="module")
def staging(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 2 MB tmpfs, mounted for this module (tests run as root here)."""
    folder = tmp_path_factory.mktemp("staging")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={STAGING_MB}m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture(scope="module")
def small_disk_server(cluster: EmbeddedCluster, staging: Path) -> Iterator[LiveServer]:
    with live_server_running(
        cluster,
        structures=50,
        database="makazi_disk_full",
        spool_dir=str(staging),
        import_poll_s="0.2",  # a queued import starts at once
    ) as server:
        yield server


def _features(n: int, pad: int) -> bytes:
    """``n`` small squares in Kibera, ``pad`` bytes of notes each."""
    return squares(n, prefix="DF", west=36.78, south=-1.315, step=1e-5, size=5e-6, notes="x" * pad)


def _zipped(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def _counts(server: LiveServer) -> dict[str, int]:
    engine = create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            return {
                table: int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
                for table in ("imports", "import_files", "structures", "traces", "trace_files")
            }
    finally:
        engine.dispose()


def _used_bytes(folder: Path) -> int:
    stat = os.statvfs(folder)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def _import(server: LiveServer, name: str, data: bytes, queued: bool = False) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/imports",
        files={"file": (name, data, "application/octet-stream")},
        data={"collection": "structures", **({"async": "true"} if queued else {})},
        headers=server.headers("mapper"),
        timeout=60,
    )


def _assert_insufficient_storage(response: httpx.Response) -> None:
    assert response.status_code == 507, response.text[:500]
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"] == "/problems/insufficient-storage"
    assert "no space left" in problem["detail"] and "insufficient storage" in problem["detail"]
    assert "Traceback" not in response.text


@pytest.mark.parametrize(
    ("what", "send"),
    [
        # 8 MB as sent: the spool passes its 4 MB in memory and rolls over to the full disk
        ("import body", lambda s: _import(s, "big.geojson", _features(4000, 1900))),
        # 100 kB as sent, 8 MB once unpacked into the staging folder
        (
            "import archive",
            lambda s: _import(s, "big.zip", _zipped("big.geojson", _features(4000, 1900))),
        ),
        (
            "trace body",
            lambda s: httpx.post(
                f"{s.base_url}/traces",
                content=b"<?xml version='1.0'?><gpx version='1.1'>" + b" " * (8 << 20) + b"</gpx>",
                headers={**s.headers("mapper"), "Content-Type": "application/gpx+xml"},
                timeout=60,
            ),
        ),
    ],
)
def test_a_full_staging_area_is_a_clean_507(
    small_disk_server: LiveServer, staging: Path, what: str, send: object
) -> None:
    before = _counts(small_disk_server)
    assert callable(send)
    _assert_insufficient_storage(send(small_disk_server))
    assert _counts(small_disk_server) == before, what
    assert list(staging.iterdir()) == [], what
    assert _used_bytes(staging) < 64 * 1024, what  # the unnamed spool file is gone too
    # the server carries on: a small import goes through
    small = _import(small_disk_server, "small.geojson", _features(3, 10))
    assert small.status_code == 201, small.text[:500]
    assert _counts(small_disk_server)["structures"] == before["structures"] + 3
    engine = create_engine(small_disk_server.database_url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM structures WHERE structure_number LIKE 'DF-%'"))
    engine.dispose()


def _finished(server: LiveServer, response: httpx.Response) -> dict[str, object]:
    """The queued import's ``GET /imports/{id}`` once it is done or failed."""
    assert response.status_code == 202, response.text[:500]
    url = f"{server.base_url}/imports/{response.json()['id']}"
    for _ in range(600):  # a job that never ends fails here, not by hanging
        job: dict[str, object] = httpx.get(url, headers=server.headers("mapper")).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"the import never finished: {job}")


def test_a_queued_import_that_fills_the_disk_fails_cleanly(
    small_disk_server: LiveServer, staging: Path
) -> None:
    server = small_disk_server
    before = _counts(server)
    # 100 kB as sent and stored, 8 MB once the worker unpacks it into the staging folder
    sent = _import(server, "big.zip", _zipped("big.geojson", _features(4000, 1900)), queued=True)
    job = _finished(server, sent)
    assert job["status"] == "failed"
    report = job["report"]
    assert isinstance(report, dict)
    assert report["type"] == "/problems/insufficient-storage" and report["status"] == 507
    assert "insufficient storage" in report["detail"] and "MAKAZI_SPOOL_DIR" in report["detail"]
    after = _counts(server)
    assert after["structures"] == before["structures"]  # nothing written
    assert after["import_files"] == before["import_files"]  # the stored upload dropped
    assert list(staging.iterdir()) == []
    assert _used_bytes(staging) < 64 * 1024  # the worker's temporary files are gone
    # the worker carries on with the next job
    small = _finished(server, _import(server, "small.geojson", _features(3, 10), queued=True))
    assert small["status"] == "done", small
    assert _counts(server)["structures"] == before["structures"] + 3
    engine = create_engine(server.database_url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM structures WHERE structure_number LIKE 'DF-%'"))
    engine.dispose()


def test_makazi_import_stages_in_the_spool_dir_and_says_when_it_is_full(
    small_disk_server: LiveServer, staging: Path, tmp_path: Path
) -> None:
    before = _counts(small_disk_server)
    archive = tmp_path / "big.zip"  # 100 kB here, 8 MB once unpacked into MAKAZI_SPOOL_DIR
    archive.write_bytes(_zipped("big.geojson", _features(4000, 1900)))
    result = makazi(
        "import",
        str(archive),
        "--collection",
        "structures",
        "--quiet",
        MAKAZI_DATABASE_URL=small_disk_server.database_url,
        MAKAZI_SPOOL_DIR=str(staging),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "no space left" in result.stderr and str(staging) in result.stderr
    assert "insufficient storage" in result.stderr and "MAKAZI_SPOOL_DIR" in result.stderr
    assert _counts(small_disk_server) == before  # nothing imported
    assert list(staging.iterdir()) == []
    assert _used_bytes(staging) < 64 * 1024
