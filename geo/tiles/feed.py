"""The layers' change counters, read from ``tile_changes`` or kept current by LISTEN/NOTIFY."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Connection, text

log = logging.getLogger("makazi.tiles")

__all__ = ["change_counters", "ChangeFeed"]


def change_counters(conn: Connection) -> dict[str, int]:
    """The change counter of every tiled collection (bumped at each commit that edits it)."""
    rows = conn.execute(text("SELECT collection, counter FROM tile_changes")).all()
    return {str(name): int(counter) for name, counter in rows}


class ChangeFeed:
    """The layers' change counters, kept current by ``LISTEN makazi_tile_changes``.

    One background thread per process holds its own connection, reads the
    counters once, then applies every notification the bump trigger sends at
    commit.  While it is not connected, :meth:`counters` returns None and
    callers read the table instead, so a lost connection costs speed, never
    correctness.

    Parameters
    ----------
    conninfo
        libpq connection string of the database (the primary).
    """

    CHANNEL = "makazi_tile_changes"

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._counters: dict[str, int] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tile-change-feed", daemon=True)

    def start(self) -> ChangeFeed:
        """Start listening in the background."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening (within about a second)."""
        self._stop.set()
        self._thread.join(timeout=5)

    def counters(self) -> dict[str, int] | None:
        """The current counters, or None while not listening."""
        with self._lock:
            return dict(self._counters) if self._counters is not None else None

    def _set(self, value: dict[str, int] | None) -> None:
        with self._lock:
            self._counters = value

    def _run(self) -> None:
        import psycopg

        backoff = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {self.CHANNEL}")
                    rows = conn.execute("SELECT collection, counter FROM tile_changes").fetchall()
                    self._set({str(name): int(counter) for name, counter in rows})
                    backoff = 0.5
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            name, _, counter = note.payload.partition(" ")
                            with self._lock:
                                if self._counters is not None and counter.isdigit():
                                    current = self._counters.get(name, -1)
                                    self._counters[name] = max(current, int(counter))
            except Exception:
                log.warning("tile change feed lost its connection; reading counters per tile")
            self._set(None)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)
