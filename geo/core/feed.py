"""One LISTEN connection per process for the changes other processes commit."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from geo.core.auth import TOKENS_CHANNEL
from geo.core.replicas import WRITES_CHANNEL

log = logging.getLogger("makazi.feed")

__all__ = ["ChangeFeed"]


class ChangeFeed:
    """What other processes committed that this one must hear of at once, by LISTEN.

    * ``makazi_tile_changes``: the layers' tile change counters (migration
      0011), so a cached tile is answered without asking the database;
    * ``makazi_tokens``: a token was revoked (migration 0012), so cached
      tokens are dropped in every worker;
    * ``makazi_writes``: a client wrote, so its next reads go to the primary in
      every worker (:mod:`geo.core.replicas`), passed to ``on_write``.

    One background thread per process holds its own connection, reads the
    counters once, then applies every notification sent at commit.  While it
    is not connected, :meth:`counters` and :meth:`token_generation` return None
    and callers ask the database instead, so a lost connection costs speed,
    never correctness.

    Parameters
    ----------
    conninfo
        libpq connection string of the database (the primary).
    on_write
        Called with the client's key for every ``makazi_writes`` notification.
    """

    CHANNEL = "makazi_tile_changes"

    def __init__(self, conninfo: str, on_write: Callable[[str], None] | None = None) -> None:
        self._conninfo = conninfo
        self._on_write = on_write
        self._counters: dict[str, int] | None = None
        self._tokens: int | None = None
        self._generation = 0
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

    def token_generation(self) -> int | None:
        """A number that changes whenever a token is revoked; None while not listening.

        A token looked up under one generation may be trusted while the
        generation stays the same.
        """
        with self._lock:
            return self._tokens

    def _set(self, value: dict[str, int] | None) -> None:
        with self._lock:
            self._counters = value
            # while disconnected nothing is known; on reconnect start a new generation
            self._tokens = None if value is None else self._generation + 1
            self._generation += 1

    def _run(self) -> None:
        import psycopg

        backoff = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {self.CHANNEL}")
                    conn.execute(f"LISTEN {TOKENS_CHANNEL}")
                    if self._on_write is not None:
                        conn.execute(f"LISTEN {WRITES_CHANNEL}")
                    rows = conn.execute("SELECT collection, counter FROM tile_changes").fetchall()
                    self._set({str(name): int(counter) for name, counter in rows})
                    backoff = 0.5
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            if note.channel == TOKENS_CHANNEL:
                                with self._lock:
                                    self._generation += 1
                                    if self._tokens is not None:
                                        self._tokens = self._generation
                                continue
                            if note.channel == WRITES_CHANNEL:
                                if self._on_write is not None:
                                    self._on_write(note.payload)
                                continue
                            name, _, counter = note.payload.partition(" ")
                            with self._lock:
                                if self._counters is not None and counter.isdigit():
                                    current = self._counters.get(name, -1)
                                    self._counters[name] = max(current, int(counter))
            except Exception:
                log.warning("change feed lost its connection; asking the database per request")
            self._set(None)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)
