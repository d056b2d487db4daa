"""The embedded cluster: create, start, stop, restart, stale pid file, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from geo.core.cluster import (
    LOCAL_PORT_RANGE,
    MAX_WAL_SIZE,
    WAL_COMPRESSION,
    ClusterError,
    EmbeddedCluster,
    find_postgres,
    listen_ports,
)
from tests.support.cli import makazi


@pytest.fixture(scope="module")
def spare(tmp_path_factory: pytest.TempPathFactory, cluster: EmbeddedCluster) -> EmbeddedCluster:
    """A second cluster for tests that stop and break it (the session one stays up)."""
    return EmbeddedCluster(tmp_path_factory.mktemp("spare"), server_options={"fsync": "off"})


def test_postgres_with_postgis_is_found() -> None:
    pg = find_postgres()
    assert pg is not None and pg.has_postgis
    assert (pg.bin_dir / "pg_ctl").exists()


def test_restart_keeps_the_port(spare: EmbeddedCluster) -> None:
    """Connections left in TIME_WAIT must not push the cluster to another port."""
    spare.start()
    port = spare.port
    for _ in range(3):
        with psycopg.connect(spare.conninfo()) as conn:
            conn.execute("SELECT 1")
    spare.stop()
    spare.start()
    try:
        assert spare.port == port
    finally:
        spare.stop()


def test_a_new_cluster_compresses_its_wal_and_checkpoints_less_often(
    cluster: EmbeddedCluster,
) -> None:
    """The settings written at initdb: a compression method this server was built with (the
    probe found one, else ``off``) and room for a bulk import's WAL between checkpoints."""
    with psycopg.connect(cluster.conninfo()) as conn:
        method = conn.execute("SHOW wal_compression").fetchone()
        size = conn.execute("SHOW max_wal_size").fetchone()
    assert method is not None and method[0] in WAL_COMPRESSION
    assert size is not None and size[0] == MAX_WAL_SIZE


def test_a_new_cluster_listens_below_the_ephemeral_ports(cluster: EmbeddedCluster) -> None:
    """A stopped cluster's port cannot become some client connection's source port, so a
    restart on a busy machine keeps it instead of moving under the running server."""
    low, high = (int(v) for v in LOCAL_PORT_RANGE.read_text().split())
    assert cluster.port in listen_ports()
    assert not low <= cluster.port <= high


def test_stop_works_after_a_parent_folder_was_made_private(spare: EmbeddedCluster) -> None:
    """Every new pytest session as root makes ``/tmp/pytest-of-root`` private (0700) again,
    taking back the service user's way to a running cluster's files: ``pg_ctl stop`` then
    failed with "Permission denied" (so could ``test_database_down``'s stop, whenever
    another session started while it ran)."""
    spare.start()
    parent = spare.data_dir.parent
    parent.chmod(parent.stat().st_mode & ~0o077)  # what another pytest session does
    assert spare.stop()
    assert not spare.running()


def test_start_stop_restart(spare: EmbeddedCluster) -> None:
    assert spare.start() is True
    assert spare.start() is False  # already running
    assert spare.running()
    with psycopg.connect(spare.conninfo()) as conn:
        listen = conn.execute("SHOW listen_addresses").fetchone()
        assert listen is not None and listen[0] == "127.0.0.1"
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        assert conn.execute("SELECT postgis_version()").fetchone()
    assert spare.stop() is True
    assert not spare.running()
    assert spare.stop() is False
    assert spare.start() is True
    assert spare.status()["running"] is True
    spare.stop()


def test_socket_and_state_live_in_data_dir(spare: EmbeddedCluster) -> None:
    spare.start()
    try:
        assert any(spare.socket_dir.glob(".s.PGSQL.*"))
        state = json.loads(spare.state_file.read_text())
        assert state["port"] == spare.port
        assert oct(spare.state_file.stat().st_mode & 0o777) == "0o600"
    finally:
        spare.stop()


def test_wrong_password_is_refused(spare: EmbeddedCluster) -> None:
    spare.start()
    try:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(spare.conninfo().replace(spare.password, "wrong"))
    finally:
        spare.stop()


def test_recovers_from_stale_pid_file(spare: EmbeddedCluster) -> None:
    spare.start()
    spare.stop()
    # A crash leaves postmaster.pid behind, naming a process that is not postgres.
    (spare.pgdata / "postmaster.pid").write_text(f"{os.getpid()}\n{spare.pgdata}\n")
    assert not spare.running()
    assert spare.start() is True
    assert spare.running()
    spare.stop()


def test_port_taken_by_someone_else_moves(spare: EmbeddedCluster) -> None:
    import socket

    spare.start()
    spare.stop()
    old = spare.port
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        blocker.bind(("127.0.0.1", old))
        blocker.listen()
        spare.start()
        try:
            assert spare.port != old
        finally:
            spare.stop()


def test_not_writable_data_dir_is_clear(tmp_path: Path) -> None:
    target = tmp_path / "file-not-dir"
    target.write_text("x")
    with pytest.raises(ClusterError, match="not writable"):
        EmbeddedCluster(target / "sub").init()


def test_cli_db_lifecycle(tmp_path: Path) -> None:
    data = tmp_path / "cli-data"
    started = makazi("db", "start", data_dir=data)
    assert started.returncode == 0, started.stderr
    assert started.stderr.count("created a new database in") == 1
    assert str(data) in started.stderr
    try:
        again = makazi("db", "start", data_dir=data)
        assert again.stdout.startswith("already running") and "created" not in again.stderr
        url = makazi("db", "url", data_dir=data)
        assert url.stdout.startswith("postgresql+psycopg://makazi:")
        status = makazi("db", "status", data_dir=data)
        assert json.loads(status.stdout)["running"] is True
        migrated = makazi("migrate", data_dir=data)
        assert migrated.returncode == 0, migrated.stderr
        token = makazi("token", "create", "--name", "amina", "--role", "mapper", data_dir=data)
        assert token.returncode == 0 and token.stdout.strip().startswith("mkz_")
        assert len(token.stdout.strip().splitlines()) == 1
    finally:
        stopped = makazi("db", "stop", data_dir=data)
    assert stopped.stdout.strip() == "stopped"
    assert makazi("db", "status", data_dir=data).returncode == 3
    restarted = makazi("migrate", data_dir=data)  # the same database: nothing new to say
    assert restarted.returncode == 0 and "created" not in restarted.stderr
    missing = makazi("db", "url", data_dir=tmp_path / "never")
    assert missing.returncode == 1 and str(tmp_path / "never") in missing.stderr


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    bad_role = makazi("token", "create", "--name", "x", "--role", "king", data_dir=tmp_path)
    assert bad_role.returncode != 0
    assert bad_role.stderr.strip().count("\n") == 0 and "king" in bad_role.stderr
    unreachable = makazi(
        "migrate", data_dir=tmp_path, MAKAZI_DATABASE_URL="postgresql://u:p@127.0.0.1:9/x"
    )
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("makazi: cannot reach the database")
    assert "Traceback" not in unreachable.stderr
    no_cluster = makazi("db", "url", data_dir=tmp_path / "empty")
    assert no_cluster.returncode == 1 and "makazi db start" in no_cluster.stderr


def test_cli_serve_refuses_busy_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        result = makazi("serve", "--port", str(port), data_dir=tmp_path)
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "in use" in result.stderr


class Served:
    """``makazi serve`` on a fresh data dir, its output kept in a file (a pipe can fill)."""

    def __init__(self, tmp_path: Path, name: str, **settings: str) -> None:
        import socket

        self.data = tmp_path / name
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "MAKAZI_DATA_DIR": str(self.data), **settings}
        env.pop("MAKAZI_DATABASE_URL", None)
        self.log = (tmp_path / f"{name}.log").open("w+b")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_for(self, status: int, path: str = "/healthz") -> httpx.Response:
        """Poll ``path`` until it answers ``status`` (3 minutes at most)."""
        deadline = time.monotonic() + 180
        last = "no answer"
        while True:
            try:
                response = httpx.get(self.base + path, timeout=5)
                if response.status_code == status:
                    return response
                last = f"{response.status_code} {response.text[:300]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                self.log.seek(0)
                said = self.log.read().decode(errors="replace")[-3000:]
                raise AssertionError(
                    f"{path} never answered {status}; last: {last}; server said: {said}"
                )
            time.sleep(0.3)


def test_serve_rides_out_a_database_restart(tmp_path: Path) -> None:
    """`makazi db stop` / `start` while `makazi serve` runs: 503 meanwhile, then served again."""
    served = Served(tmp_path, "ride")
    try:
        served.wait_for(200)
        assert makazi("db", "stop", data_dir=served.data).returncode == 0
        down = served.wait_for(503)
        assert down.headers["content-type"].startswith("application/problem+json")
        items = httpx.get(served.base + "/collections/structures/items", timeout=10)
        assert items.status_code == 503
        assert makazi("db", "start", data_dir=served.data).returncode == 0
        served.wait_for(200)
        page = served.wait_for(200, "/collections/structures/items")
        assert page.json()["numberReturned"] == 0
    finally:
        served.process.terminate()
        served.process.wait(timeout=60)
    # serve did not start this second cluster, so it left it running: stop it here
    makazi("db", "stop", data_dir=served.data)
    assert not EmbeddedCluster(served.data).running()


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_serve_stops_its_database_on_exit(tmp_path: Path, signal_name: str) -> None:
    """Ctrl-C (or a service manager's SIGTERM) leaves no postgres process behind."""
    import signal

    served = Served(tmp_path, "stop")
    served.wait_for(200)
    cluster = EmbeddedCluster(served.data)
    pid = cluster.status()["pid"]
    assert cluster.running() and isinstance(pid, int)
    served.process.send_signal(getattr(signal, signal_name))
    assert served.process.wait(timeout=60) in (0, 130, 143, -2, -15)
    assert not cluster.running()
    stat_file = Path(f"/proc/{pid}/stat")
    # gone, or a zombie waiting for a container's init to reap it: either way not running
    assert not stat_file.exists() or stat_file.read_text().split(")")[-1].split()[0] == "Z"


def test_serve_stops_within_its_shutdown_timeout_despite_a_stalled_upload(tmp_path: Path) -> None:
    """A request still in flight (an upload whose phone lost signal) cannot hold up Ctrl-C."""
    import signal
    import socket

    served = Served(tmp_path, "stall", MAKAZI_SHUTDOWN_TIMEOUT_S="2")
    served.wait_for(200)
    created = makazi(
        "token", "create", "--name", "stalled", "--role", "mapper", data_dir=served.data
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    host, port = served.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            (
                f"POST /traces HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                "Content-Type: application/gpx+xml\r\nContent-Length: 5000000\r\n\r\n"
                "<?xml version='1.0'?><gpx version='1.1'>"
            ).encode()
        )
        time.sleep(1)  # the upload is being read
        cluster = EmbeddedCluster(served.data)
        assert cluster.running()
        served.process.send_signal(signal.SIGINT)
        assert served.process.wait(timeout=60) in (0, 130, -2)
    assert not cluster.running()


def test_cli_unwritable_data_dir_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = makazi("db", "start", data_dir=blocker / "data")
    assert result.returncode == 1
    assert result.stderr.startswith("makazi: data dir") and "not writable" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="already running as an ordinary user")
def test_cluster_as_an_ordinary_user(request: pytest.FixtureRequest) -> None:
    """The same code run by an unprivileged account starts and stops its own cluster."""
    import pwd

    user = "makazi-pg"
    entry = pwd.getpwnam(user)  # created by the session cluster under root
    import shutil
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="makazi-ordinary-"))  # pytest's tmp is root-only
    request.addfinalizer(lambda: shutil.rmtree(home, ignore_errors=True))
    os.chown(home, entry.pw_uid, entry.pw_gid)
    script = (
        "import sys; from pathlib import Path; from geo.core.cluster import EmbeddedCluster; "
        "c = EmbeddedCluster(Path(sys.argv[1])); print(c.start(), c.running()); "
        "print(c.stop(), c.running())"
    )
    # The venv's interpreter may live under /root, which other accounts cannot enter: use
    # the system Python of the same version with this checkout and the venv's packages.
    import site
    import sysconfig

    system_python = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system_python.exists():
        pytest.skip(f"{system_python} (the system Python of this version) is not installed")
    root = Path(__file__).resolve().parents[2]
    paths = [str(root), sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    result = subprocess.run(
        ["runuser", "-u", user, "--", str(system_python), "-c", script, str(home / "data")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=home,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": os.pathsep.join(paths)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "True", "True", "False"]


def test_missing_postgis_names_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without PostGIS and without the right to install it, the error is the command to run."""
    import geo.core.cluster as cluster_module

    without = [cluster_module.PgInstall(15, Path("/usr/lib/postgresql/15/bin"), False)]
    monkeypatch.setattr(cluster_module, "_installs", lambda: without)
    with pytest.raises(
        ClusterError,
        match=r"apt-get install -y postgresql-15 "
        r"postgresql-15-postgis-3",
    ):
        cluster_module.ensure_postgis(install=False)
