"""Read replicas: which one may answer a read now, and which clients must read the primary.

The rule
--------
* Writes, and every read inside a request that writes (POST, PUT, PATCH, DELETE),
  go to the primary.
* For ``read_after_write_s`` seconds after a client's write commits, that client's
  reads go to the primary too (read-your-writes).  A client is its API token; anonymous
  clients cannot write, so they always read from replicas.  The worker that ran the
  write knows at once; the others hear of it through the change feed (a ``NOTIFY`` on
  :data:`WRITES_CHANNEL` sent by the write's own transaction, so it arrives at commit).
* Other reads go round robin to the healthy replicas.  Each process checks every
  replica every ``replica_check_s`` seconds in a background thread (never per
  request).  A replica is healthy when it answers and its lag is at most
  ``replica_max_lag_s`` (see :func:`measure_lag`).  With no healthy replica, reads
  go to the primary.
* A replica that fails to connect is skipped at once (the read goes to the primary)
  and stays skipped until a check finds it back.  A replica lost in the middle of a
  read marks the request's :class:`Route` as ``lost``; the web app then answers that
  GET again from the primary (:mod:`app.read_routing`: bounded answers are built
  whole before their first byte goes out); a long stream (an export) carries on
  from the primary after the last row it sent (:mod:`geo.exports.resume`).
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text

__all__ = [
    "ROUTE",
    "WRITES_CHANNEL",
    "RecentWriters",
    "ReplicaSet",
    "ReplicaState",
    "Route",
    "measure_lag",
]

log = logging.getLogger("makazi.replicas")

WRITES_CHANNEL = "makazi_writes"
"""Where a write by a signed-in client announces the client's key at commit."""


@dataclass
class Route:
    """How the current request's reads are routed (one object per request).

    Attributes
    ----------
    client
        The key of the calling token, None when anonymous.
    writes
        Whether the request may write (a method other than GET, HEAD, OPTIONS).
    primary
        Read from the primary whatever the replicas' state (a retry after ``lost``).
    lost
        A replica failed during one of this request's reads.
    long_stream
        The answer is sent as it is produced (an export), not built whole first.
    """

    client: str | None = None
    writes: bool = False
    primary: bool = False
    lost: bool = False
    long_stream: bool = False


ROUTE: ContextVar[Route | None] = ContextVar("makazi_route", default=None)
"""The current request's :class:`Route`; None outside a request (commands, workers)."""


class RecentWriters:
    """Clients that wrote within the last ``window_s`` seconds (per process)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def mark(self, client: str) -> None:
        """``client`` has just written."""
        now = time.monotonic()
        with self._lock:
            if len(self._until) > 10_000:
                self._until = {k: v for k, v in self._until.items() if v > now}
            self._until[client] = now + self.window_s

    def recent(self, client: str) -> bool:
        """Whether ``client`` wrote within the window."""
        with self._lock:
            return self._until.get(client, 0.0) > time.monotonic()


_LAG = text(
    """
    SELECT pg_is_in_recovery(),
           CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END,
           pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn(),
           EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming'),
           extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())
    """
)


def measure_lag(conn: Connection) -> float:
    """How far behind its primary the connected server is, in seconds.

    * not in recovery (a primary, or a promoted replica): 0;
    * streaming, not paused, and everything received is replayed: 0.  The age of
      the last replayed commit is not used here: on an idle primary it grows
      although nothing is missing.  "Received" may lag behind "replayed" just
      after the replica restarts (its receiver starts again at a segment's
      start), which is caught up too;
    * otherwise (replay behind, paused, or not streaming): the age of the last
      replayed commit, an upper bound of what may be missing; infinite when nothing
      was ever replayed.
    """
    in_recovery, paused, caught_up, streaming, age = conn.execute(_LAG).one()
    if not in_recovery:
        return 0.0
    if streaming and caught_up and not paused:
        return 0.0
    return float(age) if age is not None else math.inf


@dataclass
class ReplicaState:
    """What the last check found out about one replica.

    Attributes
    ----------
    url
        The replica's URL, password hidden.
    healthy
        Whether reads may go there.
    lag_s
        The lag measured (None when it did not answer).
    error
        Why it is skipped, or "".
    checked_at
        ``time.monotonic()`` of the last check (0: never checked).
    """

    url: str
    healthy: bool = False
    lag_s: float | None = None
    error: str = "not checked yet"
    checked_at: float = 0.0


class ReplicaSet:
    """The read replicas of one process, their health, and the thread that checks it.

    Parameters
    ----------
    engines
        One engine per replica.
    max_lag_s
        A replica lagging more than this is skipped.
    check_s
        Seconds between two checks of every replica.
    """

    def __init__(self, engines: list[Engine], *, max_lag_s: float, check_s: float) -> None:
        self.engines = engines
        self.max_lag_s = max_lag_s
        self.check_s = check_s
        self._states = {
            id(engine): ReplicaState(engine.url.render_as_string(hide_password=True))
            for engine in engines
        }
        self._next = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __bool__(self) -> bool:
        return bool(self.engines)

    def states(self) -> list[ReplicaState]:
        """The state of every replica, in configuration order."""
        with self._lock:
            return [ReplicaState(**vars(self._states[id(engine)])) for engine in self.engines]

    def pick(self) -> Engine | None:
        """A healthy replica (round robin), or None when none is healthy.

        The first call starts the checking thread; until its first check ends
        no replica counts as healthy.
        """
        if not self.engines:
            return None
        self._start()
        with self._lock:
            healthy = [e for e in self.engines if self._states[id(e)].healthy]
        if not healthy:
            return None
        return healthy[next(self._next) % len(healthy)]

    def check(self) -> None:
        """Connect to every replica and measure its lag now."""
        for engine in self.engines:
            lag: float | None = None
            error = ""
            try:
                with engine.connect() as conn:
                    lag = measure_lag(conn)
                    conn.rollback()
            except Exception as exc:
                error = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            if lag is not None and lag > self.max_lag_s:
                error = f"lags {lag:.1f} s (more than MAKAZI_REPLICA_MAX_LAG_S={self.max_lag_s:g})"
            self._update(engine, healthy=not error, lag_s=lag, error=error)

    def mark_down(self, engine: Engine, reason: BaseException) -> None:
        """Skip ``engine`` until the next check finds it back."""
        message = str(reason).strip().splitlines()[0] if str(reason).strip() else repr(reason)
        self._update(engine, healthy=False, lag_s=None, error=message)

    def _update(self, engine: Engine, *, healthy: bool, lag_s: float | None, error: str) -> None:
        with self._lock:
            state = self._states[id(engine)]
            if state.healthy != healthy or state.checked_at == 0.0:
                level = logging.INFO if healthy else logging.WARNING
                log.log(level, "replica %s: %s", state.url, "healthy" if healthy else error)
            state.healthy, state.lag_s, state.error = healthy, lag_s, error
            state.checked_at = time.monotonic()

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="replica-checks", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:  # pragma: no cover - check() catches per replica
                log.exception("replica check failed")
            self._stop.wait(self.check_s)

    def stop(self) -> None:
        """Stop the checking thread and close every replica's pooled connections."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for engine in self.engines:
            engine.dispose()
