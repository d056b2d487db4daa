"""A real Makazi server (uvicorn in a subprocess) for tests that drive real clients.

GDAL, QGIS, OWSLib and the browser need a server on a TCP port; this one runs
against its own committed database in the session's cluster.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row, create_engine, text

from geo.core.auth import ROLES, create_token
from geo.core.cluster import EmbeddedCluster
from geo.core.db import migrate
from geo.demo.generator import generate
from geo.demo.loader import load
from tests.support.server import makazi_on


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

    def query(self, sql: str, **params: Any) -> list[Row[Any]]:
        """Rows of ``sql`` read straight from the server's database (a connection of its own)."""
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                return list(conn.execute(text(sql), params).all())
        finally:
            engine.dispose()


@contextmanager
def live_server_running(
    cluster: EmbeddedCluster,
    *,
    structures: int = 400,
    database: str = "makazi_live",
    workers: int = 1,
    **settings: str,
) -> Iterator[LiveServer]:
    """Create and fill ``database``, serve it on a free port, stop and drop it afterwards.

    ``settings`` are ``MAKAZI_*`` settings of the server (``tile_max_age_s="2"``);
    ``workers`` the number of uvicorn worker processes.
    """
    url = cluster.create_database(database, drop=True)
    migrate(url)
    engine = create_engine(url)
    tokens = {}
    with engine.begin() as conn:
        load(conn, generate(structures, seed=21))
        for role in ROLES:
            tokens[role] = create_token(conn, name=f"live-{role}", role=role)
    engine.dispose()
    try:
        with makazi_on(url, workers=workers, **settings) as (base_url, process):
            yield LiveServer(base_url=base_url, database_url=url, process=process, tokens=tokens)
    finally:
        cluster.drop_database(database)
