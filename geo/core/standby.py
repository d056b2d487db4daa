"""Streaming replicas of the embedded cluster, to try read replicas on one machine.

``makazi db replica add`` copies the running embedded primary with
``pg_basebackup -R`` into ``$MAKAZI_DATA_DIR/pg-replica-N``: a hot standby with its
own port, socket folder (``run-replica-N``), log (``log/replica-N.log``) and
replication slot (``makazi_replica_N``, so the primary keeps the WAL a stopped
replica still needs; at most ``max_slot_wal_keep_size``).  The replicas start and
stop with the primary (``makazi db start|stop``, ``makazi serve``).
"""

from __future__ import annotations

import re
import shutil

from geo.core.cluster import ClusterError, EmbeddedCluster, _free_port

__all__ = [
    "EmbeddedReplica",
    "add_replica",
    "embedded_replicas",
    "remove_replica",
    "start_replicas",
    "stop_replicas",
]

_STATE = re.compile(r"^replica-(\d+)\.json$")
SLOT_WAL_LIMIT = "2GB"
"""``max_slot_wal_keep_size`` set on the primary by ``replica add``: a replica stopped
for long may lose its slot (and must be removed and added again) rather than fill the disk."""


class EmbeddedReplica(EmbeddedCluster):
    """Replica number ``number`` of the embedded ``primary``.

    It is an :class:`EmbeddedCluster` (start, stop, status, URL) whose data folder
    is made by ``pg_basebackup`` instead of ``initdb``.
    """

    def __init__(self, primary: EmbeddedCluster, number: int) -> None:
        super().__init__(primary.data_dir)
        self.primary = primary
        self.number = number
        self.pgdata = self.data_dir / f"pg-replica-{number}"
        self.socket_dir = self.data_dir / f"run-replica-{number}"
        self.log_file = self.data_dir / "log" / f"replica-{number}.log"
        self.state_file = self.data_dir / f"replica-{number}.json"
        self.slot = f"makazi_replica_{number}"

    def init(self) -> None:
        """Copy the running primary with ``pg_basebackup -R`` unless done already."""
        if self.initialised:
            return
        if not self.primary.running():
            raise ClusterError("the embedded primary is not running; run `makazi db start` first")
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise ClusterError(f"{self.pgdata} exists but holds no replica; move it away first")
        pg = self.primary.install()
        self._drop_slot()
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._prepare_root()
        if self.pgdata.exists():
            self.pgdata.chmod(0o700)
        result = self._run(
            [
                str(pg.bin_dir / "pg_basebackup"),
                "-d",
                self.primary.conninfo("postgres")
                + f" application_name=makazi_replica_{self.number}",
                "-D",
                str(self.pgdata),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-C",
                "-S",
                self.slot,
            ]
        )
        if result.returncode != 0:
            shutil.rmtree(self.pgdata, ignore_errors=True)
            self._drop_slot()
            raise ClusterError(f"pg_basebackup failed: {result.stderr.strip()}")
        port = _free_port()
        with (self.pgdata / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"# replica {self.number} of {self.primary.pgdata}, added by makazi\n")
            conf.write(f"port = {port}\n")
            conf.write(f"unix_socket_directories = '{self.socket_dir}'\n")
            conf.write("hot_standby = on\n")
        self._save_state({"port": port, "password": self.primary.password, "major": pg.major})

    def lag_s(self) -> float | None:
        """Its lag in seconds (:func:`geo.core.replicas.measure_lag`); None when not running
        or not answering."""
        from sqlalchemy import create_engine

        from geo.core.replicas import measure_lag

        if not self.running():
            return None
        engine = create_engine(self.url(), connect_args={"connect_timeout": 5})
        try:
            with engine.connect() as conn:
                return measure_lag(conn)
        except Exception:
            return None
        finally:
            engine.dispose()

    def wal_behind(self) -> tuple[int | None, bool]:
        """(bytes of WAL the primary wrote that this replica has not replayed, streaming now).

        Read on the primary from its slot and ``pg_stat_replication``; (None, False)
        when the primary is not running or has no slot for it.
        """
        if not self.primary.running():
            return None, False
        import psycopg

        with psycopg.connect(self.primary.conninfo("postgres"), autocommit=True) as conn:
            row = conn.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), "
                "coalesce(r.replay_lsn, s.restart_lsn))::bigint, "
                "coalesce(r.state = 'streaming', false) "
                "FROM pg_replication_slots s LEFT JOIN pg_stat_replication r "
                "ON r.pid = s.active_pid WHERE s.slot_name = %s",
                (self.slot,),
            ).fetchone()
        if row is None:
            return None, False
        return (int(row[0]) if row[0] is not None else None), bool(row[1])

    def status(self) -> dict[str, object]:
        """The cluster's report plus its number, lag (seconds, and bytes of WAL) and
        whether it is streaming from the primary.  ``lag_s`` is null when unknown
        (stopped, not answering, or never replayed a commit)."""
        report = super().status()
        lag = self.lag_s()
        behind, streaming = self.wal_behind()
        report.update(
            number=self.number,
            url=self.url() if self.initialised else None,
            streaming=streaming,
            lag_s=lag if lag is not None and lag != float("inf") else None,
            lag_bytes=behind,
        )
        return report

    def destroy(self) -> None:
        """Stop it, drop its slot on the primary and delete its files."""
        self.stop()
        self._drop_slot()
        shutil.rmtree(self.pgdata, ignore_errors=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        self.log_file.unlink(missing_ok=True)
        self.state_file.unlink(missing_ok=True)

    def _drop_slot(self) -> None:
        """Drop this replica's slot on the primary (when the primary runs and has it)."""
        if not self.primary.running():
            return
        import psycopg

        with psycopg.connect(self.primary.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s AND NOT active",
                (self.slot,),
            )


def embedded_replicas(primary: EmbeddedCluster) -> list[EmbeddedReplica]:
    """The replicas added to ``primary``, by number."""
    numbers = []
    if primary.data_dir.is_dir():
        for path in primary.data_dir.iterdir():
            match = _STATE.match(path.name)
            if match:
                numbers.append(int(match.group(1)))
    return [EmbeddedReplica(primary, number) for number in sorted(numbers)]


def add_replica(primary: EmbeddedCluster) -> EmbeddedReplica:
    """Make a new replica of the running ``primary`` and start it."""
    if not primary.initialised or not primary.running():
        raise ClusterError("the embedded primary is not running; run `makazi db start` first")
    taken = [replica.number for replica in embedded_replicas(primary)]
    replica = EmbeddedReplica(primary, max(taken, default=0) + 1)
    _limit_slot_wal(primary)
    replica.init()
    try:
        replica.start()
    except ClusterError:
        replica.destroy()
        raise
    return replica


def remove_replica(primary: EmbeddedCluster, number: int) -> None:
    """Stop and delete replica ``number``."""
    found = [r for r in embedded_replicas(primary) if r.number == number]
    if not found:
        raise ClusterError(f"there is no replica {number} in {primary.data_dir}")
    found[0].destroy()


def start_replicas(primary: EmbeddedCluster) -> list[EmbeddedReplica]:
    """Start every replica that is not running; the ones this call started."""
    return [replica for replica in embedded_replicas(primary) if replica.start()]


def stop_replicas(primary: EmbeddedCluster, only: list[EmbeddedReplica] | None = None) -> None:
    """Stop the replicas (``only`` these when given)."""
    for replica in embedded_replicas(primary) if only is None else only:
        replica.stop()


def _limit_slot_wal(primary: EmbeddedCluster) -> None:
    import psycopg

    with psycopg.connect(primary.conninfo("postgres"), autocommit=True) as conn:
        current = conn.execute("SHOW max_slot_wal_keep_size").fetchone()
        if current is not None and current[0] == "-1":
            conn.execute(f"ALTER SYSTEM SET max_slot_wal_keep_size = '{SLOT_WAL_LIMIT}'")
            conn.execute("SELECT pg_reload_conf()")
