"""A pg_auto_failover formation on loopback: a monitor and two data nodes (``pg_autoctl``).

Run as the embedded cluster runs PostgreSQL: under root, as the unprivileged
service user (``runuser -u makazi-pg``).  Every node's socket goes to one folder
of ours (``PG_REGRESS_SOCK_DIR``; Debian's ``/var/run/postgresql`` belongs to
``postgres``), and pg_autoctl's configuration and state to ``XDG_*`` folders
inside the formation's folder, so nothing outside it is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geo.core.cluster import SERVICE_USER, EmbeddedCluster, PgInstall, _free_port

__all__ = ["APP_USER", "Formation", "autoctl_missing"]

APP_USER = "makazi"
"""The role the app connects as (a superuser, as in the embedded cluster)."""


def autoctl_missing(pg: PgInstall) -> str | None:
    """Why a formation cannot run here (the package to install), or None."""
    package = f"postgresql-{pg.major}-auto-failover"
    if shutil.which("pg_autoctl") is None:
        return f"pg_autoctl is not installed (Debian package {package})"
    share = Path(f"/usr/share/postgresql/{pg.major}/extension/pgautofailover.control")
    if not share.exists():
        return f"the pgautofailover extension is not installed (Debian package {package})"
    return None


class Formation:
    """A monitor and data nodes ``node1``, ``node2``, ... under ``root``."""

    def __init__(self, root: Path, pg: PgInstall) -> None:
        self.root = root
        self.pg = root / "pg"
        self.sockets = root / "run"
        self.bin_dir = pg.bin_dir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.ports: dict[str, int] = {}
        # the embedded cluster's own preparation: the service user owns pg/, run/ and log/
        EmbeddedCluster(root)._prepare_root()

    # ---------------------------------------------------------------- commands
    def _argv(self, *argv: str) -> list[str]:
        env = [
            f"XDG_CONFIG_HOME={self.pg / 'config'}",
            f"XDG_DATA_HOME={self.pg / 'share'}",
            f"PATH={self.bin_dir}:/usr/bin:/bin",
            f"PG_REGRESS_SOCK_DIR={self.sockets}",
            f"PGHOST={self.sockets}",
        ]
        command = ["env", *env, "pg_autoctl", *argv]
        return ["runuser", "-u", SERVICE_USER, "--", *command] if os.geteuid() == 0 else command

    def autoctl(self, *argv: str) -> str:
        """Run ``pg_autoctl argv`` to its end; its standard output."""
        result = subprocess.run(
            self._argv(*argv), capture_output=True, text=True, cwd=self.root, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"pg_autoctl {' '.join(argv)}: {result.stderr[-2000:]}")
        return result.stdout

    def _keep_running(self, name: str, *argv: str) -> None:
        log = (self.root / "log" / f"{name}.log").open("ab")
        self.processes.append(
            subprocess.Popen(
                self._argv(*argv, "--run"),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,
            )
        )

    def pgdata(self, name: str) -> Path:
        return self.pg / name

    # ---------------------------------------------------------------- formation
    def monitor_uri(self) -> str:
        return f"postgres://autoctl_node@127.0.0.1:{self.ports['monitor']}/pg_auto_failover"

    def start_monitor(self, attempts: int = 3) -> None:
        """``pg_autoctl create monitor``, kept running; returns once it answers.

        A monitor that does not come up (its port taken meanwhile by another test's
        server, a slow first start) is stopped, wiped and created again on a new port.
        """
        for attempt in range(1, attempts + 1):
            self.ports["monitor"] = _free_port()
            self._keep_running(
                "monitor",
                "create",
                "monitor",
                "--pgdata",
                str(self.pgdata("monitor")),
                "--pgport",
                str(self.ports["monitor"]),
                *_LOOPBACK,
            )
            keeper = self.processes[-1]

            def up(keeper: subprocess.Popen[bytes] = keeper) -> bool:
                if keeper.poll() is not None:
                    raise AssertionError(f"pg_autoctl monitor exited: {self.log_tail('monitor')}")
                return self._answers("show", "state", "--pgdata", str(self.pgdata("monitor")))

            try:
                wait_until(up, 90, lambda: f"monitor not up: {self.log_tail('monitor')}")
                return
            except AssertionError:
                if attempt == attempts:
                    raise
                self.processes.remove(keeper)
                _end(keeper)
                shutil.rmtree(self.pgdata("monitor"), ignore_errors=True)

    def log_tail(self, name: str, size: int = 2000) -> str:
        """The end of ``name``'s pg_autoctl log."""
        path = self.root / "log" / f"{name}.log"
        return path.read_bytes()[-size:].decode(errors="replace") if path.exists() else "(no log)"

    def add_node(self, name: str) -> None:
        """``pg_autoctl create postgres`` for node ``name``, kept running."""
        self.ports[name] = _free_port()
        self._keep_running(
            name,
            "create",
            "postgres",
            "--pgdata",
            str(self.pgdata(name)),
            "--pgport",
            str(self.ports[name]),
            "--name",
            name,
            "--dbname",
            "makazi",
            "--monitor",
            self.monitor_uri(),
            *_LOOPBACK,
        )

    def states(self) -> dict[str, dict[str, Any]]:
        """Each node's reported and assigned state, by name (empty when unreadable)."""
        try:
            out = self.autoctl("show", "state", "--json", "--pgdata", str(self.pgdata("monitor")))
            nodes = json.loads(out) if out.strip() else []
        except (RuntimeError, json.JSONDecodeError):
            return {}
        return {node["nodename"]: node for node in nodes}

    def wait_for_states(self, wanted: dict[str, str], timeout: float = 180) -> None:
        """Until each named node reports and is assigned the wanted state."""

        def reached() -> bool:
            states = self.states()
            return all(
                name in states
                and states[name].get("current_group_state")
                == state
                == states[name].get("assigned_group_state")
                for name, state in wanted.items()
            )

        wait_until(reached, timeout, lambda: f"states: {self.states()}")

    def uri(self) -> str:
        """The formation's multi-host URL (``pg_autoctl show uri --formation default``)."""
        return self.autoctl(
            "show", "uri", "--formation", "default", "--pgdata", str(self.pgdata("monitor"))
        ).strip()

    def psql(self, node: str, sql: str, database: str = "makazi") -> str:
        """Run ``sql`` on ``node`` as the service user (its superuser) over the socket."""
        command = [
            str(self.bin_dir / "psql"),
            "-X",
            "-qAt",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.sockets),
            "-p",
            str(self.ports[node]),
            "-d",
            database,
            "-c",
            sql,
        ]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVICE_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"psql on {node}: {result.stderr}")
        return result.stdout.strip()

    def _answers(self, *argv: str) -> bool:
        try:
            self.autoctl(*argv)
        except RuntimeError:
            return False
        return True

    def stop(self) -> None:
        """Stop every node, then the monitor (``pg_autoctl stop``), and their keepers."""
        for process in reversed(self.processes):
            _end(process)


def _end(process: subprocess.Popen[bytes]) -> None:
    """Stop a pg_autoctl keeper (it stops its PostgreSQL on SIGTERM); kill it after 30 s."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


_LOOPBACK = ("--hostname", "127.0.0.1", "--auth", "trust", "--no-ssl")
"""Trust on loopback, no TLS: a test on one machine, never a deployment."""


def wait_until(
    condition: Callable[[], bool], timeout: float = 120, why: Callable[[], str] | None = None
) -> None:
    """Poll ``condition`` every 0.3 s until it holds; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(why() if why else "condition not met in time")
        time.sleep(0.3)
