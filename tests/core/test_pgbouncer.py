"""deploy/pgbouncer.ini in transaction mode between the app and PostgreSQL.

The app's ``MAKAZI_DATABASE_URL`` points at pgbouncer, its change feed straight at
PostgreSQL (``MAKAZI_DATABASE_LISTEN_URL``), and psycopg prepares nothing when
pgbouncer cannot keep prepared statements (before 1.21).  Reads, writes, tiles
and the tile cache's invalidation all work through it, and pgbouncer's own
statistics show the app's transactions passed through.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy import create_engine, text

from geo.core.auth import create_token
from geo.core.cluster import SERVICE_USER, EmbeddedCluster
from geo.core.db import migrate
from geo.demo.generator import generate
from geo.demo.loader import load
from tests.support.server import free_port, makazi_on

INI = Path(__file__).resolve().parents[2] / "deploy" / "pgbouncer.ini"
PGBOUNCER = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
)
DATABASE = "makazi_bouncer"

pytestmark = pytest.mark.skipif(
    PGBOUNCER is None, reason="pgbouncer is not installed (Debian package pgbouncer)"
)


def pgbouncer_version() -> tuple[int, int]:
    assert PGBOUNCER is not None
    out = subprocess.run([PGBOUNCER, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"(\d+)\.(\d+)", out)
    assert found, out
    return int(found.group(1)), int(found.group(2))


@pytest.fixture(scope="module")
def bouncer(cluster: EmbeddedCluster) -> Iterator[tuple[str, str, int, str]]:
    """pgbouncer with the shipped file before a fresh database: (app URL, direct URL,
    pgbouncer port, mapper token)."""
    assert PGBOUNCER is not None
    direct = cluster.create_database(DATABASE, drop=True)
    migrate(direct)
    engine = create_engine(direct)
    with engine.begin() as conn:
        load(conn, generate(300, seed=11))
        token = create_token(conn, name="bouncer-mapper", role="mapper")
    engine.dispose()

    # not under pytest's temporary root, which other pytest sessions close to other users
    root = Path(tempfile.mkdtemp(prefix="makazi-pgbouncer-"))
    root.chmod(0o755)
    port = free_port()
    ini = INI.read_text()
    for old, new in (
        (
            "makazi = host=127.0.0.1 port=5432 dbname=makazi",
            f"{DATABASE} = host=127.0.0.1 port={cluster.port} dbname={DATABASE}",
        ),
        ("listen_port = 6432", f"listen_port = {port}"),
        ("/etc/pgbouncer/userlist.txt", str(root / "userlist.txt")),
        ("/var/log/postgresql/pgbouncer.log", str(root / "pgbouncer.log")),
        ("/var/run/postgresql/pgbouncer.pid", str(root / "pgbouncer.pid")),
    ):
        assert old in ini, f"deploy/pgbouncer.ini no longer says {old!r}"
        ini = ini.replace(old, new)
    ini += f"unix_socket_dir = {root}\n"
    if pgbouncer_version() >= (1, 21):
        ini = ini.replace(";; max_prepared_statements", "max_prepared_statements")
    (root / "pgbouncer.ini").write_text(ini)
    (root / "userlist.txt").write_text(f'"makazi" "{cluster.password}"\n')
    argv = [PGBOUNCER, str(root / "pgbouncer.ini")]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root, like PostgreSQL
        user = pwd.getpwnam(SERVICE_USER)
        for path in [root, *root.iterdir()]:
            os.chown(path, user.pw_uid, user.pw_gid)
        argv = ["runuser", "-u", SERVICE_USER, "--", *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    via = f"postgresql://makazi:{cluster.password}@127.0.0.1:{port}/{DATABASE}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                psycopg.connect(via, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (
                        (root / "pgbouncer.log").read_text()
                        if (root / "pgbouncer.log").exists()
                        else ""
                    )
                    raise RuntimeError(f"pgbouncer did not start: {log[-2000:]}") from None
                time.sleep(0.2)
        yield via, direct, port, token
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        cluster.drop_database(DATABASE)
        shutil.rmtree(root, ignore_errors=True)


def transactions_through(port: int, password: str) -> int:
    """pgbouncer's count of transactions it passed to the test database."""
    admin = f"postgresql://makazi:{password}@127.0.0.1:{port}/pgbouncer"
    with psycopg.connect(admin, autocommit=True, prepare_threshold=None) as conn:
        cursor = conn.cursor()
        cursor.execute("SHOW STATS")
        names = [column.name for column in cursor.description or []]
        for row in cursor.fetchall():
            values = dict(zip(names, row, strict=True))
            if values["database"] == DATABASE:
                return int(values["total_xact_count"])
    return 0


def test_the_app_works_through_pgbouncer_in_transaction_mode(
    bouncer: tuple[str, str, int, str], cluster: EmbeddedCluster
) -> None:
    via, direct, port, token = bouncer
    prepared = "true" if pgbouncer_version() >= (1, 21) else "false"
    before = transactions_through(port, cluster.password)
    with makazi_on(via, database_listen_url=direct, database_prepared_statements=prepared) as (
        base,
        _,
    ):
        mapper = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base, timeout=30) as http:
            page = http.get("/collections/structures/items", params={"limit": 50})
            assert page.status_code == 200, page.text
            fid = page.json()["features"][0]["id"]
            # the same statements many times from several clients at once: psycopg would
            # prepare them on one server connection and run them on another
            assert concurrent_reads(base, f"/collections/structures/items/{fid}") == {200}
            x, y = tile_of(direct, fid)
            tile = f"/tiles/16/{x}/{y}.mvt"
            first = http.get(tile)
            assert first.status_code == 200
            assert http.get(tile).headers["etag"] == first.headers["etag"]
            item = http.get(f"/collections/structures/items/{fid}", headers=mapper)
            storeys = (item.json()["properties"]["storeys"] or 0) + 2
            edited = http.patch(
                f"/collections/structures/items/{fid}",
                json={"properties": {"storeys": storeys}},
                headers={**mapper, "If-Match": item.headers["etag"]},
            )
            assert edited.status_code == 200, edited.text
            read = http.get(f"/collections/structures/items/{fid}", headers=mapper)
            assert read.json()["properties"]["storeys"] == storeys
            time.sleep(0.3)  # the change feed (straight to PostgreSQL) hears of the commit
            assert http.get(tile).headers["etag"] != first.headers["etag"]
    assert transactions_through(port, cluster.password) > before + 15


def concurrent_reads(base: str, path: str, clients: int = 8, each: int = 25) -> set[int]:
    """The statuses of ``clients`` times ``each`` GETs of ``path``, the clients at once."""
    statuses: set[int] = set()

    def one() -> None:
        with httpx.Client(base_url=base, timeout=30) as http:
            for _ in range(each):
                statuses.add(http.get(path).status_code)

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def tile_of(url: str, fid: int) -> tuple[int, int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        x, y = conn.execute(
            text(
                "SELECT floor((ST_X(c) + 180) / 360 * 65536)::int, "
                "floor((1 - ln(tan(radians(ST_Y(c))) + 1 / cos(radians(ST_Y(c)))) / pi())"
                " / 2 * 65536)::int FROM (SELECT ST_Centroid(geom) AS c FROM structures "
                "WHERE id = :id) s"
            ),
            {"id": fid},
        ).one()
    engine.dispose()
    return int(x), int(y)
