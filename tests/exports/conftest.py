"""A committed export database and a real server on it (GDAL workers read on their own connection).

Each test's usual transaction is invisible to an export worker, so these tests
export from their own committed database: demo data, plus rows whose values an
export could damage (XML metacharacters, non-ASCII text, NULLs, a string list).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from geo.core.auth import create_token
from geo.core.cluster import EmbeddedCluster
from geo.core.db import act_as, migrate
from geo.demo.generator import generate
from geo.demo.loader import load
from tests.support.server import free_port, running_server, uvicorn_argv

STRUCTURES = 20_000  # the demo size: every export outgrows the sockets' buffers
DATABASE = "makazi_exports"
AWKWARD_NUMBER = "A&B <\"7\"> 'x'"
AWKWARD_MATERIAL = "Mabati \u2013 bati \u00f1 \u00fc \u6771"
AWKWARD_NOTE = '<b>Tom &amp; Jerry</b>; "gate" &lt; 2 m \u2014 \u0645\u0646\u0632\u0644'


@dataclass
class ExportServer:
    """The server's URL, database, planner token, temp folder and a tile with structures."""

    base_url: str
    database_url: str
    headers: dict[str, str]
    tmpdir: Path
    tile: str
    pid: int


def tile_of(lon: float, lat: float, z: int) -> str:
    """The ``/tiles/z/x/y.mvt`` path of the tile holding a point."""
    n = 2**z
    x = int((lon + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    return f"/tiles/{z}/{x}/{y}.mvt"


def fill(url: str) -> tuple[str, str]:
    """Demo data and awkward values; a planner token and a tile path."""
    engine = create_engine(url)
    with engine.begin() as conn:
        load(conn, generate(STRUCTURES, seed=5))
        act_as(conn, "export-tests")
        first = conn.execute(text("SELECT min(id) FROM structures")).scalar_one()
        conn.execute(
            text(
                "UPDATE structures SET structure_number = :number, wall_material = :wall, "
                "roof_material = NULL, storeys = NULL, review_note = :note, "
                "position_accuracy_m = 2.25 WHERE id = :id"
            ),
            {"number": AWKWARD_NUMBER, "wall": AWKWARD_MATERIAL, "note": AWKWARD_NOTE, "id": first},
        )
        conn.execute(
            text(
                "UPDATE settlements SET alt_names = ARRAY['Kibra', :odd], notes = NULL "
                "WHERE id = (SELECT min(id) FROM settlements)"
            ),
            {"odd": 'Ki"bera & co'},
        )
        token = create_token(conn, name="export-planner", role="planner")
        lon, lat = conn.execute(
            text(
                "SELECT ST_X(c), ST_Y(c) FROM (SELECT ST_Centroid(geom) c FROM structures "
                "WHERE id = :id) x"
            ),
            {"id": first},
        ).one()
    engine.dispose()
    return token, tile_of(lon, lat, 16)


@pytest.fixture(scope="session")
def export_database(cluster: EmbeddedCluster) -> Iterator[tuple[str, str, str]]:
    """(URL, planner token, tile path) of the committed export database."""
    url = cluster.create_database(DATABASE, drop=True)
    migrate(url)
    token, tile = fill(url)
    yield url, token, tile
    cluster.drop_database(DATABASE)


@pytest.fixture(scope="session")
def export_server(
    export_database: tuple[str, str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ExportServer]:
    """Makazi under uvicorn with one export worker and its own temp folder."""
    url, token, tile = export_database
    tmpdir = tmp_path_factory.mktemp("export-server-tmp")
    port = free_port()
    env = {
        "MAKAZI_DATABASE_URL": url,
        "MAKAZI_LOG_LEVEL": "warning",
        "MAKAZI_EXPORT_WORKERS": "1",
        "TMPDIR": str(tmpdir),
    }
    argv = uvicorn_argv(sys.executable, "app.main:create_app", port, factory=True)
    with running_server(argv, port, env, health="/healthz") as proc:
        yield ExportServer(
            base_url=f"http://127.0.0.1:{port}",
            database_url=url,
            headers={"Authorization": f"Bearer {token}"},
            tmpdir=tmpdir,
            tile=tile,
            pid=proc.pid,
        )


def download(
    server: ExportServer, collection: str, fmt: str, path: Path, **params: str | int
) -> Path:
    """``GET /exports/{collection}?format=fmt`` (and ``params``) saved to ``path``."""
    with httpx.stream(
        "GET",
        f"{server.base_url}/exports/{collection}",
        params={"format": fmt, **params},
        headers=server.headers,
        timeout=120,
    ) as response:
        assert response.status_code == 200, response.read()
        assert "attachment" in response.headers["content-disposition"]
        with path.open("wb") as out:
            for chunk in response.iter_bytes():
                out.write(chunk)
    return path


def leftovers(tmpdir: Path) -> list[str]:
    """Export folders still in ``tmpdir``."""
    return sorted(p.name for p in tmpdir.glob("makazi-export-*"))


def children(pid: int) -> list[tuple[int, bytes]]:
    """Live child processes of ``pid``: (pid, command line)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append((int(proc.name), cmdline))
    return found


def workers(pid: int) -> list[int]:
    """Live export workers of server ``pid`` (children of its multiprocessing fork server)."""
    servers = [child for child, cmdline in children(pid) if b"forkserver" in cmdline]
    return [worker for server in servers for worker, _ in children(server)]
