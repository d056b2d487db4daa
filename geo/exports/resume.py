"""An export streamed from a read replica that carries on from the primary if the replica goes.

The formats PostgreSQL builds are keyset-ordered by ``id`` and note the last row
of every chunk they yield (:class:`~geo.exports.query.Progress`).  When the
replica fails midway, the same builder runs again on the primary with
``after`` = the last row sent, leaving out what was already sent (header,
separator); bytes sent past that row (a header alone; a FlatGeobuf, which is
built whole and cannot resume after a row) are skipped from the new stream.  The
client gets the bytes an uninterrupted export would have given, as long as the
rows did not change in between (a replica within ``MAKAZI_REPLICA_MAX_LAG_S`` of
the primary, the same ``id`` order on both).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Generator

import psycopg
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from geo.core.db import Database, replica_failure, set_statement_timeout
from geo.exports.query import ExportRows, Progress

__all__ = ["resumable"]

log = logging.getLogger("makazi.exports")

Builder = Callable[[Connection, ExportRows], Generator[bytes, None, None]]


def resumable(
    db: Database, conn: Connection, rows: ExportRows, build: Builder, *, timeout_ms: int
) -> Generator[bytes, None, None]:
    """``build(conn, rows)``'s bytes; from the primary after the last row sent if ``conn``'s
    replica fails.  The caller owns ``conn``; a failure on the primary propagates."""
    rows = dataclasses.replace(rows, after=None, progress=Progress())
    sent = 0
    mark_id: int | None = None
    mark_bytes = 0
    chunks = build(conn, rows)
    try:
        for chunk in chunks:
            yield chunk
            sent += len(chunk)
            if rows.progress.last_id != mark_id:
                mark_id, mark_bytes = rows.progress.last_id, sent
        return
    except (DBAPIError, psycopg.OperationalError) as exc:
        if db.on_primary(conn) or not _replica_lost(exc):
            raise
        db.replicas.mark_down(conn.engine, exc)
        log.warning(
            "replica lost during an export of %s after row %s: resuming on the primary",
            rows.collection.name,
            mark_id,
        )
    finally:
        chunks.close()
    skip = sent - mark_bytes
    rest = dataclasses.replace(rows, after=mark_id, progress=Progress())
    with db.engine.connect() as primary:
        set_statement_timeout(primary, timeout_ms)
        for chunk in build(primary, rest):
            if skip:
                cut = min(skip, len(chunk))
                chunk, skip = chunk[cut:], skip - cut
            if chunk:
                yield chunk
        primary.rollback()


def _replica_lost(exc: DBAPIError | psycopg.OperationalError) -> bool:
    """Whether the replica went away (CSV's ``COPY`` raises psycopg's own errors)."""
    if isinstance(exc, DBAPIError):
        return replica_failure(exc)
    return not isinstance(exc, psycopg.errors.QueryCanceled)
