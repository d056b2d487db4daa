"""The embedded PostgreSQL + PostGIS cluster that Makazi runs for itself.

With no ``MAKAZI_DATABASE_URL`` the service keeps a private cluster in
``$MAKAZI_DATA_DIR/pg``: created once with ``initdb``, started with
``pg_ctl`` on a free port of 127.0.0.1 and a unix socket inside the data
directory, password-protected, and stopped cleanly.  PostgreSQL refuses to run
as root, so under root the server runs as the unprivileged system user
``makazi-pg``.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ClusterError",
    "EmbeddedCluster",
    "PgInstall",
    "ensure_postgis",
    "find_postgres",
    "install_command",
]

SERVICE_USER = "makazi-pg"
SUPERUSER = "makazi"
DEFAULT_DATABASE = "makazi"
_POSTGIS_PACKAGE = re.compile(r"^postgresql-(\d+)-postgis-3$")
#: Full-page images in the WAL compressed with the first of these the server was built with.
WAL_COMPRESSION = ("zstd", "lz4", "pglz")
#: WAL between checkpoints (PostgreSQL's default is 1GB: a checkpoint every ~540 MB of a bulk
#: import's WAL, each followed by full-page images of every page touched again).
MAX_WAL_SIZE = "2GB"


class ClusterError(RuntimeError):
    """A problem with the embedded cluster, phrased for the person at the terminal."""


@dataclass(frozen=True)
class PgInstall:
    """One installed PostgreSQL major version.

    Attributes
    ----------
    major
        The major version, e.g. 15.
    bin_dir
        Where ``initdb``, ``pg_ctl`` and ``postgres`` live.
    has_postgis
        Whether the PostGIS extension is installed for this major.
    """

    major: int
    bin_dir: Path
    has_postgis: bool


def _postgis_installed(major: int) -> bool:
    share = Path(f"/usr/share/postgresql/{major}/extension")
    return any(share.glob("postgis--*.sql")) or (share / "postgis.control").exists()


def _installs() -> list[PgInstall]:
    found = []
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        for child in root.iterdir():
            if child.name.isdigit() and (child / "bin" / "pg_ctl").exists():
                major = int(child.name)
                found.append(PgInstall(major, child / "bin", _postgis_installed(major)))
    pg_config = shutil.which("pg_config")
    if not found and pg_config:
        bindir = Path(
            subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
        )
        share = subprocess.run(
            [pg_config, "--sharedir"], capture_output=True, text=True
        ).stdout.strip()
        version = subprocess.run(
            [pg_config, "--version"], capture_output=True, text=True
        ).stdout.split()
        major = int(version[1].split(".")[0]) if len(version) > 1 else 0
        has = (Path(share) / "extension" / "postgis.control").exists()
        found.append(PgInstall(major, bindir, has))
    return sorted(found, key=lambda item: item.major, reverse=True)


def find_postgres() -> PgInstall | None:
    """The newest PostgreSQL with PostGIS, else the newest PostgreSQL, else None."""
    installs = _installs()
    with_postgis = [item for item in installs if item.has_postgis]
    if with_postgis:
        return with_postgis[0]
    return installs[0] if installs else None


def _apt_postgis_majors() -> list[int]:
    """Majors for which the apt archive carries ``postgresql-N-postgis-3``."""
    if not shutil.which("apt-cache"):
        return []
    result = subprocess.run(
        ["apt-cache", "pkgnames", "postgresql-"], capture_output=True, text=True, check=False
    )
    majors = set()
    for line in result.stdout.splitlines():
        match = _POSTGIS_PACKAGE.match(line.strip())
        if match:
            majors.add(int(match.group(1)))
    return sorted(majors, reverse=True)


def install_command(major: int | None = None) -> str:
    """The shell command that installs PostGIS on Debian/Ubuntu."""
    if major is None:
        return (
            "apt-get update && apt-get install -y postgresql postgresql-N-postgis-3 "
            "(N = the PostgreSQL major that `apt-cache search postgis-3` lists)"
        )
    return f"apt-get update && apt-get install -y postgresql-{major} postgresql-{major}-postgis-3"


def ensure_postgis(*, install: bool = True, quiet: bool = False) -> PgInstall:
    """Find PostgreSQL with PostGIS, installing it with apt when allowed.

    Parameters
    ----------
    install
        Try ``apt-get install`` when running as root on Debian/Ubuntu.
    quiet
        Do not show apt's output.

    Raises
    ------
    ClusterError
        When PostGIS is missing and cannot be installed; the message holds the
        exact command to run.
    """
    current = find_postgres()
    if current is not None and current.has_postgis:
        return current
    can_apt = install and os.geteuid() == 0 and shutil.which("apt-get") is not None
    if not can_apt:
        major = current.major if current else None
        raise ClusterError(f"PostGIS is not installed; run as root: {install_command(major)}")
    output = subprocess.DEVNULL if quiet else None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    majors = _apt_postgis_majors()
    if not majors:
        subprocess.run(["apt-get", "update"], env=env, stdout=output, check=False)
        majors = _apt_postgis_majors()
    if not majors:
        raise ClusterError(
            "the apt archive offers no postgresql-N-postgis-3 package; "
            f"install PostgreSQL and PostGIS yourself, e.g. {install_command()}"
        )
    installed = {item.major for item in _installs()}
    chosen = next((major for major in majors if major in installed), majors[0])
    packages = [f"postgresql-{chosen}", f"postgresql-{chosen}-postgis-3"]
    result = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", *packages],
        env=env,
        stdout=output,
        check=False,
    )
    if result.returncode != 0:
        raise ClusterError(
            f"apt-get could not install {' '.join(packages)}; run: {install_command(chosen)}"
        )
    found = find_postgres()
    if found is None or not found.has_postgis:
        raise ClusterError(f"PostGIS still missing after install; run: {install_command(chosen)}")
    return found


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _port_free(port: int) -> bool:
    """Whether nothing listens on ``port``; like PostgreSQL, ignore TIME_WAIT leftovers.

    Without SO_REUSEADDR a port looks taken for a minute after a restart, and the
    cluster would move to another port under a running server's feet.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


LOCAL_PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LISTEN_PORTS = range(20_000, 32_768)
"""Where a cluster's port is chosen when the kernel's ephemeral range is unknown."""


def listen_ports() -> range:
    """Ports a cluster may listen on: below the kernel's ephemeral (source port) range.

    The kernel gives every outgoing connection a source port from
    ``ip_local_port_range`` (32768-60999 by default).  A cluster listening on one of
    those leaves it free whenever it is stopped, and any client connection made
    meanwhile (one of the server's own reconnection attempts, a pool elsewhere on the
    machine) can take it; the restart then finds it busy and moves to another port
    under the running server's feet, which keeps asking the old one.  Outside that
    range only a process that binds the port on purpose can take it.
    """
    try:
        low = int(LOCAL_PORT_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return LISTEN_PORTS
    return range(max(1_024, low - 12_000), low) if low > 2_048 else LISTEN_PORTS


def _free_port() -> int:
    """A port nothing listens on, below the ephemeral range (see :func:`listen_ports`)."""
    ports = listen_ports()
    for _ in range(200):
        port = ports.start + secrets.randbelow(len(ports))
        if _port_free(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))  # every one tried is busy: any the kernel gives
        chosen: int = sock.getsockname()[1]
    return chosen


def _pid_is_postgres(pid: int) -> bool:
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return comm.startswith("postgres") or comm.startswith("postmaster")


class EmbeddedCluster:
    """A private PostgreSQL cluster under ``data_dir``.

    Parameters
    ----------
    data_dir
        The Makazi data directory; the cluster lives in ``data_dir/pg``.
    server_options
        Extra ``postgresql.conf`` settings written at ``initdb`` time.
    """

    def __init__(self, data_dir: Path, server_options: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.pgdata = self.data_dir / "pg"
        self.socket_dir = self.data_dir / "run"
        self.log_file = self.data_dir / "log" / "postgresql.log"
        self.state_file = self.data_dir / "cluster.json"
        self.server_options = server_options or {}

    # ------------------------------------------------------------------ state
    def _state(self) -> dict[str, object]:
        if self.state_file.exists():
            loaded: dict[str, object] = json.loads(self.state_file.read_text())
            return loaded
        return {}

    def _save_state(self, state: dict[str, object]) -> None:
        self.state_file.write_text(json.dumps(state, indent=2))
        self.state_file.chmod(0o600)

    @property
    def initialised(self) -> bool:
        """Whether ``initdb`` has run."""
        return (self.pgdata / "PG_VERSION").exists() and self.state_file.exists()

    @property
    def port(self) -> int:
        """The TCP port the cluster listens on (or will)."""
        return int(str(self._state().get("port", 0)))

    @property
    def password(self) -> str:
        """The superuser password, kept in ``cluster.json`` (mode 600)."""
        return str(self._state().get("password", ""))

    def install(self) -> PgInstall:
        """The PostgreSQL install this cluster was created with (or will be)."""
        state = self._state()
        found = _installs()
        if "major" in state:
            for item in found:
                if item.major == state["major"]:
                    return item
            raise ClusterError(
                f"the cluster in {self.pgdata} needs PostgreSQL {state['major']}, "
                f"which is not installed; run: {install_command(int(str(state['major'])))}"
            )
        best = find_postgres()
        if best is None:
            raise ClusterError(f"PostgreSQL is not installed; run: {install_command()}")
        return best

    def url(self, database: str = DEFAULT_DATABASE) -> str:
        """SQLAlchemy URL (psycopg 3 driver) of a database in this cluster."""
        return f"postgresql+psycopg://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def conninfo(self, database: str = DEFAULT_DATABASE) -> str:
        """libpq connection string of a database in this cluster."""
        return (
            f"host=127.0.0.1 port={self.port} user={SUPERUSER} "
            f"password={self.password} dbname={database} connect_timeout=5"
        )

    # -------------------------------------------------------------- commands
    def _as_service_user(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        return ["runuser", "-u", SERVICE_USER, "--", *argv]

    def _run(
        self, argv: list[str], *, new_session: bool = False
    ) -> subprocess.CompletedProcess[str]:
        self._grant_traversal()
        return subprocess.run(
            self._as_service_user(argv),
            capture_output=True,
            text=True,
            check=False,
            start_new_session=new_session,
            cwd=str(self.data_dir),
        )

    def _prepare_root(self) -> None:
        """Under root: create the service user and let it reach and own the cluster."""
        if os.geteuid() != 0:
            return
        if not _user_exists(SERVICE_USER):
            result = subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    SERVICE_USER,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0 and "already exists" not in result.stderr:
                raise ClusterError(f"cannot create system user {SERVICE_USER}: {result.stderr}")
        entry = pwd.getpwnam(SERVICE_USER)
        self._grant_traversal()
        for folder in (self.pgdata, self.socket_dir, self.log_file.parent):
            folder.mkdir(parents=True, exist_ok=True)
            for path in [folder, *folder.rglob("*")]:
                os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
        self.data_dir.chmod(self.data_dir.stat().st_mode | stat.S_IXOTH)

    def _grant_traversal(self) -> None:
        """Under root: let the service user reach the data dir (every parent searchable).

        Done again before each command the service user runs: someone else may have
        taken the permission back meanwhile (every new pytest session as root makes
        ``/tmp/pytest-of-root`` private again), and ``pg_ctl stop`` then could not
        read the cluster's pid file, so the cluster would not stop.
        """
        if os.geteuid() != 0:
            return
        for parent in self.data_dir.parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(mode | stat.S_IXOTH)

    def _check_writable(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            probe = self.data_dir / ".write-probe"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise ClusterError(f"data dir {self.data_dir} is not writable: {exc.strerror}") from exc

    def init(self) -> None:
        """Create the cluster with ``initdb`` unless it exists already."""
        if self.initialised:
            return
        self._check_writable()
        pg = self.install()
        if not pg.has_postgis:
            raise ClusterError(
                f"PostGIS is not installed for PostgreSQL {pg.major}; "
                f"run `makazi db ensure` or: {install_command(pg.major)}"
            )
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise ClusterError(
                f"{self.pgdata} exists but holds no usable cluster (no PG_VERSION or "
                f"cluster.json); move it away and try again"
            )
        for folder in (self.pgdata, self.socket_dir, self.log_file.parent):
            folder.mkdir(parents=True, exist_ok=True)
        self.pgdata.chmod(0o700)
        password = secrets.token_urlsafe(24)
        self._prepare_root()
        pwfile = self.socket_dir / "initdb.pw"
        pwfile.write_text(password + "\n")
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SERVICE_USER)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        pwfile.chmod(0o600)
        try:
            result = self._run(
                [
                    str(pg.bin_dir / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    SUPERUSER,
                    "--pwfile",
                    str(pwfile),
                    "--auth-host=scram-sha-256",
                    "--auth-local=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise ClusterError(f"initdb failed: {result.stderr.strip() or result.stdout.strip()}")
        options = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": "100",
            "shared_buffers": "256MB",
            "work_mem": "32MB",
            "maintenance_work_mem": "256MB",
            "wal_level": "replica",
            "max_wal_senders": "10",
            "hot_standby": "on",
            "jit": "off",
            "log_min_messages": "warning",
            "max_wal_size": MAX_WAL_SIZE,
            "wal_compression": self._wal_compression(pg),
            **self.server_options,
        }
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write("\n# added by makazi\n")
            for key, value in options.items():
                conf.write(f"{key} = {value}\n")
        with (self.pgdata / "pg_hba.conf").open("a") as hba:
            hba.write("host replication makazi 127.0.0.1/32 scram-sha-256\n")
        self._save_state({"port": _free_port(), "password": password, "major": pg.major})

    def _wal_compression(self, pg: PgInstall) -> str:
        """The first of :data:`WAL_COMPRESSION` this server accepts (``off`` if none)."""
        for method in WAL_COMPRESSION:
            check = [str(pg.bin_dir / "postgres"), "-D", str(self.pgdata), "-C", "wal_compression"]
            if self._run([*check, "-c", f"wal_compression={method}"]).returncode == 0:
                return method
        return "off"

    def _postmaster_pid(self) -> int | None:
        pidfile = self.pgdata / "postmaster.pid"
        try:
            first = pidfile.read_text().splitlines()[0]
            return int(first)
        except (OSError, ValueError, IndexError):
            return None

    def running(self) -> bool:
        """Whether this cluster's postmaster is alive."""
        pid = self._postmaster_pid()
        return pid is not None and _pid_is_postgres(pid)

    def _clear_stale_pid(self) -> bool:
        pid = self._postmaster_pid()
        if (self.pgdata / "postmaster.pid").exists() and (pid is None or not _pid_is_postgres(pid)):
            (self.pgdata / "postmaster.pid").unlink(missing_ok=True)
            for lock in self.socket_dir.glob(".s.PGSQL.*"):
                lock.unlink(missing_ok=True)
            return True
        return False

    def start(self, timeout: float = 60.0) -> bool:
        """Start the cluster (creating it first if needed).

        Returns
        -------
        bool
            True when this call started it, False when it was running already.
        """
        self.init()
        if self.running():
            return False
        self._clear_stale_pid()
        self._prepare_root()
        pg = self.install()
        state = self._state()
        port = int(str(state["port"]))
        if not _port_free(port):
            port = _free_port()
            state["port"] = port
            self._save_state(state)
        result = self._run(
            [
                str(pg.bin_dir / "pg_ctl"),
                "-D",
                str(self.pgdata),
                "-l",
                str(self.log_file),
                "-o",
                f"-p {port}",
                "-w",
                "-t",
                str(int(timeout)),
                "start",
            ],
            new_session=True,
        )
        if result.returncode != 0:
            tail = ""
            if self.log_file.exists():
                tail = " | ".join(self.log_file.read_text(errors="replace").splitlines()[-3:])
            raise ClusterError(f"PostgreSQL did not start: {result.stderr.strip()} {tail}".strip())
        self._wait_ready(timeout)
        self._create_database(DEFAULT_DATABASE)
        return True

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.conninfo("postgres")):
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise ClusterError(f"PostgreSQL did not accept connections: {exc}") from exc
                time.sleep(0.2)

    def _create_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def create_database(self, name: str, *, drop: bool = False) -> str:
        """Create a database (dropping an old one first when asked) and return its URL."""
        if drop:
            self.drop_database(name)
        self._create_database(name)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, closing its connections first."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def stop(self, timeout: float = 60.0, *, mode: str = "fast") -> bool:
        """Stop the cluster (``pg_ctl stop -m mode``: a fast shutdown unless told).

        Returns
        -------
        bool
            True when it was running and is now stopped.
        """
        if not self.initialised or not self.running():
            self._clear_stale_pid()
            return False
        pg = self.install()
        result = self._run(
            [
                str(pg.bin_dir / "pg_ctl"),
                "-D",
                str(self.pgdata),
                "-m",
                mode,
                "-w",
                "-t",
                str(int(timeout)),
                "stop",
            ]
        )
        if result.returncode != 0 and self.running():
            pid = self._postmaster_pid()
            if pid:
                os.kill(pid, signal.SIGQUIT)
            raise ClusterError(f"PostgreSQL did not stop: {result.stderr.strip()}")
        return True

    def status(self) -> dict[str, object]:
        """A small report: initialised, running, pid, port, major, data dir."""
        state = self._state()
        return {
            "data_dir": str(self.pgdata),
            "initialised": self.initialised,
            "running": self.running(),
            "pid": self._postmaster_pid() if self.running() else None,
            "port": state.get("port"),
            "major": state.get("major"),
        }
