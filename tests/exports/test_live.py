"""A real server stays live during exports, and cleans up after clients that leave or Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.exports.conftest import ExportServer, leftovers, workers
from tests.support.server import free_port, uvicorn_argv

FORMATS = ["geojson", "csv", "kml", "fgb", "gpkg", "shp"]
GDAL_FORMATS = ["gpkg", "shp"]
LIVE_BOUND_S = 5.0


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def sessions(url: str) -> list[tuple[str, str]]:
    """(state, application_name) of every other connection to the export database."""
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT coalesce(state, ''), coalesce(application_name, '') FROM "
                "pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).all()
    engine.dispose()
    return [(str(s), str(a)) for s, a in rows]


def clean(server: ExportServer, url: str) -> bool:
    """No export folder, worker, open transaction or export connection is left."""
    states = sessions(url)
    return (
        not leftovers(server.tmpdir)
        and not workers(server.pid)
        and not any(state.startswith("idle in transaction") for state, _ in states)
        and not any(state == "active" for state, _ in states)
        and not any(app == "makazi-export" for _, app in states)
    )


def raw_request(base_url: str, path: str, token_header: dict[str, str]) -> socket.socket:
    """Send a GET on a socket with a tiny receive buffer and read nothing."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    headers = "".join(f"{k}: {v}\r\n" for k, v in token_header.items())
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode())
    return sock


@pytest.mark.parametrize("fmt", FORMATS)
def test_health_and_tiles_answer_during_an_export(export_server: ExportServer, fmt: str) -> None:
    done = threading.Event()
    outcome: dict[str, object] = {}

    def export() -> None:
        try:
            with httpx.stream(
                "GET",
                f"{export_server.base_url}/exports/structures",
                params={"format": fmt},
                headers=export_server.headers,
                timeout=120,
            ) as response:
                outcome["status"] = response.status_code
                size = 0
                for chunk in response.iter_bytes(65536):
                    size += len(chunk)
                    time.sleep(0.005)  # a client on a slow link keeps the export open
                outcome["size"] = size
        finally:
            done.set()

    thread = threading.Thread(target=export)
    thread.start()
    probes: list[tuple[str, int]] = []
    # a bounded client: a probe the busy server cannot answer in time fails the test
    with httpx.Client(base_url=export_server.base_url, timeout=LIVE_BOUND_S) as client:
        while not done.is_set():
            for path in ("/healthz", export_server.tile):
                try:
                    probes.append((path, client.get(path).status_code))
                except httpx.TimeoutException:
                    done.wait()
                    pytest.fail(f"{path} got no answer in {LIVE_BOUND_S} s during a {fmt} export")
            time.sleep(0.05)
    thread.join()
    assert outcome["status"] == 200 and int(str(outcome["size"])) > 100_000
    assert len(probes) >= 4, f"the {fmt} export ended before the server was probed"
    assert {status for _, status in probes} <= {200, 204}
    assert any(status == 200 for path, status in probes if path == export_server.tile)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_client_that_leaves_leaves_nothing_behind(export_server: ExportServer, fmt: str) -> None:
    url = export_server.database_url
    assert wait_for(lambda: clean(export_server, url))
    path = f"/exports/structures?{urlencode({'format': fmt})}"
    sock = raw_request(export_server.base_url, path, export_server.headers)
    if fmt in GDAL_FORMATS:
        # leave while the worker writes
        assert wait_for(lambda: bool(leftovers(export_server.tmpdir)), timeout=10)
    else:
        # leave mid-stream: the server is stuck sending, its read transaction open
        assert wait_for(
            lambda: any(s.startswith("idle in transaction") for s, _ in sessions(url)), timeout=10
        )
    sock.close()
    assert wait_for(lambda: clean(export_server, url)), (
        leftovers(export_server.tmpdir),
        workers(export_server.pid),
        sessions(url),
    )


def test_busy_workers_answer_503_with_retry_after(export_server: ExportServer) -> None:
    """The server has one export worker: a second GDAL export meanwhile is told to retry."""
    sock = raw_request(
        export_server.base_url, "/exports/structures?format=gpkg", export_server.headers
    )
    try:
        assert wait_for(lambda: bool(leftovers(export_server.tmpdir)), timeout=10)
        second = httpx.get(
            f"{export_server.base_url}/exports/structures",
            params={"format": "shp"},
            headers=export_server.headers,
            timeout=30,
        )
        assert second.status_code == 503
        assert int(second.headers["retry-after"]) > 0
        assert "MAKAZI_EXPORT_WORKERS" in second.json()["detail"]
        csv = httpx.get(
            f"{export_server.base_url}/exports/structures",
            params={"format": "csv"},
            headers=export_server.headers,
            timeout=30,
        )
        assert csv.status_code == 200  # PostGIS formats need no worker
    finally:
        sock.close()
    assert wait_for(lambda: clean(export_server, export_server.database_url))
    again = httpx.get(
        f"{export_server.base_url}/exports/structures",
        params={"format": "shp", "settlement_id": 1},
        headers=export_server.headers,
        timeout=60,
    )
    assert again.status_code == 200


def test_ctrl_c_stops_the_server_during_a_gdal_export(
    export_server: ExportServer, tmp_path: Path
) -> None:
    """Ctrl-C reaches the server and its worker (one process group); both end, nothing is left."""
    port = free_port()
    env = {
        **os.environ,
        "MAKAZI_DATABASE_URL": export_server.database_url,
        "MAKAZI_LOG_LEVEL": "warning",
        "TMPDIR": str(tmp_path),
    }
    argv = uvicorn_argv(sys.executable, "app.main:create_app", port, factory=True)
    proc = subprocess.Popen(
        argv, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: _answers(base_url), timeout=60)
        sock = raw_request(base_url, "/exports/structures?format=gpkg", export_server.headers)
        assert wait_for(lambda: bool(list(tmp_path.glob("makazi-export-*"))), timeout=10)
        assert wait_for(lambda: bool(workers(proc.pid)), timeout=10)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=20)
        sock.close()
        assert not list(tmp_path.glob("makazi-export-*"))
        assert wait_for(lambda: not _session_alive(proc.pid), timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _answers(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz", timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


def _session_alive(sid: int) -> bool:
    """Whether any process of session ``sid`` is still running."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[4]) == sid and fields[0] != "Z":
            return True
    return False
