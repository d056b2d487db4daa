"""A real Makazi server (uvicorn in a subprocess) for tests that drive real clients.

GDAL, QGIS, OWSLib and the browser need a server on a TCP port; this one runs
against its own committed database in the session's cluster.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import create_engine

from geo.auth import ROLES, create_token
from geo.cluster import EmbeddedCluster
from geo.db import migrate
from geo.demo import generate, load

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class LiveServer:
    """Where the live server listens, its database and a token per role."""

    base_url: str
    database_url: str
    process: subprocess.Popen[bytes]
    tokens: dict[str, str] = field(default_factory=dict)

    def headers(self, role: str) -> dict[str, str]:
        """An Authorization header for ``role``."""
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_live_server(
    cluster: EmbeddedCluster, *, structures: int = 400, database: str = "makazi_live"
) -> LiveServer:
    """Create and fill ``database``, then serve it; call :func:`stop_live_server` after."""
    url = cluster.create_database(database, drop=True)
    migrate(url)
    engine = create_engine(url)
    tokens = {}
    with engine.begin() as conn:
        load(conn, generate(structures, seed=21))
        for role in ROLES:
            tokens[role] = create_token(conn, name=f"live-{role}", role=role)
    engine.dispose()
    port = _free_port()
    env = {**os.environ, "MAKAZI_DATABASE_URL": url, "MAKAZI_LOG_LEVEL": "warning"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            error = process.stderr.read().decode() if process.stderr else ""
            process.kill()
            raise RuntimeError(f"live server did not start: {error[-2000:]}")
        time.sleep(0.2)
    return LiveServer(base_url=base, database_url=url, process=process, tokens=tokens)


def stop_live_server(server: LiveServer) -> None:
    """Stop the server process."""
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
