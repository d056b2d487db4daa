"""The app's database view of one test transaction."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import Connection, text

from geo.core.db import Database, act_as

__all__ = ["BoundDatabase", "RoundTrips", "insert_settlement", "round_trips"]


class BoundDatabase(Database):
    """A :class:`Database` that runs everything on one connection, in savepoints.

    Tests use it so that each test's writes are rolled back at the end.
    """

    def __init__(self, connection: Connection) -> None:
        super().__init__(connection.engine)
        self.connection = connection

    @contextmanager
    def begin(self, actor: str | None = None, *, defer_actor: bool = False) -> Iterator[Connection]:
        """A savepoint in the test's transaction, its actor named at once (``defer_actor``
        or not)."""
        with self.connection.begin_nested():
            if actor:
                act_as(self.connection, actor)
            yield self.connection

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.connection.begin_nested() as savepoint:
            yield self.connection
            savepoint.rollback()

    def notifications_url(self) -> None:
        """None: this transaction's writes are never committed, so nothing is ever notified."""
        return None

    def dispose(self) -> None:
        """The connection belongs to the caller: nothing to close."""


def insert_settlement(conn: Connection, name: str, wkt: str) -> int:
    """Insert a settlement called ``name`` with boundary ``wkt`` (EPSG:4326); its id."""
    return int(
        conn.execute(
            text(
                "INSERT INTO settlements (name, geom) VALUES (:n, ST_GeomFromText(:w, 4326)) "
                "RETURNING id"
            ),
            {"n": name, "w": wkt},
        ).scalar_one()
    )


@dataclass
class RoundTrips:
    """The round trips counted by :func:`round_trips`, known once its block ends."""

    count: int = 0


@contextmanager
def round_trips(raw: psycopg.Connection[Any]) -> Iterator[RoundTrips]:
    """Count the times ``raw`` waits for the server in the block: the ``ReadyForQuery``
    messages in libpq's protocol trace (one per ``Sync`` of a pipeline or plain query)."""
    counted = RoundTrips()
    with tempfile.TemporaryFile("w+") as log:
        raw.pgconn.trace(log.fileno())
        raw.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            yield counted
        finally:
            raw.pgconn.untrace()  # flushes libpq's writes
            log.seek(0)
            counted.count = sum("ReadyForQuery" in line for line in log)
