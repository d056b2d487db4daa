"""Import jobs in PostgreSQL: the ``imports`` rows, queued uploads and the worker.

Every import has a row (a synchronous one is written ``done`` with its report).
A queued import keeps its upload in ``import_files`` (1 MB chunks), so any
process on any machine can run it.  A worker claims the oldest queued row, or a
``running`` row whose heartbeat is older than ``import_stale_s`` (its worker
died), with ``SELECT ... FOR UPDATE SKIP LOCKED``; while it runs, a side thread
writes the heartbeat and progress in their own short transactions.  The import
itself runs in one transaction that also marks the row ``done``: a worker
killed half-way leaves nothing written, and the job is retried (up to
``import_max_attempts`` times).  A plain table was chosen over a queue library:
the whole queue is two statements, it lives in the database the imports write
to, and it needs no new dependency or schema of its own.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from sqlalchemy import Connection, text

from geo.core.auth import Principal
from geo.core.db import Database
from geo.core.errors import Forbidden, MakaziError, NotFound
from geo.core.settings import Settings
from geo.core.uploads import CHUNK, SpooledBody, no_space, out_of_space
from geo.imports.pipeline import ImportOptions, limits_from, run_import
from geo.imports.report import ImportRefused, Report
from geo.imports.sources import Limits

__all__ = [
    "ImportWorker",
    "Job",
    "claim",
    "create_import",
    "finish",
    "import_now",
    "import_status",
    "run_job",
    "store_file",
]

log = logging.getLogger("makazi.imports")
FILE_CHUNK = 1024 * 1024
#: A running import whose worker stopped writing its heartbeat.
_STALE = "status = 'running' AND heartbeat_at < now() - make_interval(secs => :stale)"


@dataclass(frozen=True)
class Job:
    """A claimed import."""

    id: int
    owner: str
    filename: str | None
    options: ImportOptions
    attempts: int


def create_import(
    conn: Connection,
    *,
    owner: str,
    options: ImportOptions,
    body: SpooledBody,
    filename: str | None,
    status: str,
) -> int:
    """A new ``imports`` row (``queued`` or ``running``); its id."""
    return int(
        conn.execute(
            text(
                """
                INSERT INTO imports (owner, collection, filename, size_bytes, sha256, options,
                                     status, started_at, heartbeat_at)
                VALUES (:owner, :collection, :filename, :size, :sha, CAST(:options AS jsonb),
                        :status, CASE WHEN :status = 'running' THEN now() END,
                        CASE WHEN :status = 'running' THEN now() END)
                RETURNING id
                """
            ),
            {
                "owner": owner,
                "collection": options.collection,
                "filename": filename,
                "size": body.size,
                "sha": body.sha256,
                "options": _json(options.as_json()),
                "status": status,
            },
        ).scalar_one()
    )


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def store_file(conn: Connection, import_id: int, body: SpooledBody) -> None:
    """Keep a queued import's upload in the database, chunk by chunk."""
    body.file.seek(0)
    seq = 0
    while chunk := body.file.read(FILE_CHUNK):
        conn.execute(
            text("INSERT INTO import_files (import_id, seq, chunk) VALUES (:id, :seq, :chunk)"),
            {"id": import_id, "seq": seq, "chunk": chunk},
        )
        seq += 1
    body.file.seek(0)


def _load_file(conn: Connection, import_id: int) -> IO[bytes]:
    """A queued import's upload as a temporary file (chunk by chunk: memory stays flat)."""
    out = tempfile.SpooledTemporaryFile(max_size=4 * CHUNK)  # noqa: SIM115 (closed by caller)
    seqs = conn.execute(
        text("SELECT seq FROM import_files WHERE import_id = :id ORDER BY seq"), {"id": import_id}
    ).scalars()
    try:
        for seq in list(seqs):
            chunk = conn.execute(
                text("SELECT chunk FROM import_files WHERE import_id = :id AND seq = :seq"),
                {"id": import_id, "seq": seq},
            ).scalar_one()
            out.write(bytes(chunk))
    except BaseException:
        out.close()  # a full disk: its space is given back at once
        raise
    out.seek(0)
    return out


def finish(conn: Connection, import_id: int, *, status: str, report: dict[str, Any]) -> None:
    """Mark an import ``done`` or ``failed`` with its report; drop its stored upload."""
    conn.execute(
        text(
            """
            UPDATE imports SET status = :status, report = CAST(:report AS jsonb),
                   progress = CASE WHEN :status = 'done' THEN 1 ELSE progress END,
                   finished_at = now(), heartbeat_at = now()
            WHERE id = :id
            """
        ),
        {"id": import_id, "status": status, "report": _json(report)},
    )
    conn.execute(text("DELETE FROM import_files WHERE import_id = :id"), {"id": import_id})


def import_now(
    conn: Connection,
    *,
    owner: str,
    options: ImportOptions,
    body: SpooledBody,
    filename: str | None,
    limits: Limits,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Report, int | None]:
    """Run an import at once on ``conn``, recorded as a ``done`` row; (report, row id).

    A dry run writes no row (the id is None).
    """
    created: list[int] = []

    def new_row() -> int:
        created.append(
            create_import(
                conn,
                owner=owner,
                options=options,
                body=body,
                filename=filename,
                status="running",
            )
        )
        return created[0]

    report = run_import(
        conn,
        body.file,
        filename=filename,
        options=options,
        limits=limits,
        import_id=new_row,
        progress=progress,
    )
    if options.dry_run:
        return report, None
    import_id = created[0] if created else new_row()
    finish(conn, import_id, status="done", report=report.as_dict())
    return report, import_id


def import_status(conn: Connection, import_id: int, user: Principal) -> dict[str, Any]:
    """``{id, status, progress, report}`` for the importer or an admin.

    Raises
    ------
    NotFound
        No such import.
    Forbidden
        Someone else's import (and the caller is not an admin).
    """
    row = conn.execute(
        text(
            "SELECT id, owner, collection, filename, status, progress, report, attempts, "
            "created_at, finished_at FROM imports WHERE id = :id"
        ),
        {"id": import_id},
    ).first()
    if row is None:
        raise NotFound(f"import {import_id} does not exist")
    if row.owner != user.name and not user.at_least("admin"):
        raise Forbidden(
            f"import {import_id} was started by someone else; only they or an admin may see it"
        )
    return {
        "id": row.id,
        "status": row.status,
        "progress": round(float(row.progress), 4),
        "collection": row.collection,
        "filename": row.filename,
        "attempts": row.attempts,
        "created_at": row.created_at.isoformat(),
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        "report": row.report,
    }


def claim(conn: Connection, *, worker: str, stale_s: float, max_attempts: int) -> Job | None:
    """Take the next queued import, or a running one whose worker died; None when idle.

    Imports whose workers died ``max_attempts`` times are marked failed instead.
    """
    conn.execute(
        text(
            f"""
            UPDATE imports SET status = 'failed', finished_at = now(),
                   report = jsonb_build_object('detail', 'the import was started '
                       || attempts || ' times and its worker stopped each time')
            WHERE {_STALE} AND attempts >= :max
            """  # noqa: S608 (a constant)
        ),
        {"stale": stale_s, "max": max_attempts},
    )
    row = conn.execute(
        text(
            f"""
            UPDATE imports SET status = 'running', attempts = attempts + 1, worker = :worker,
                   started_at = now(), heartbeat_at = now(), progress = 0
            WHERE id = (SELECT id FROM imports
                        WHERE status = 'queued' OR ({_STALE})
                        ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1)
            RETURNING id, owner, filename, options, attempts
            """  # noqa: S608 (a constant)
        ),
        {"worker": worker, "stale": stale_s},
    ).first()
    if row is None:
        return None
    return Job(
        id=int(row.id),
        owner=str(row.owner),
        filename=row.filename,
        options=ImportOptions.from_json(row.options),
        attempts=int(row.attempts),
    )


class _Heartbeat:
    """Writes a running job's heartbeat and progress every few seconds, on its own connection."""

    def __init__(self, db: Database, import_id: int, every_s: float) -> None:
        self.db = db
        self.import_id = import_id
        self.every_s = every_s
        self.progress = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"import-{import_id}-beat", daemon=True
        )

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def update(self, done: int, total: int) -> None:
        self.progress = min(done / total, 0.99) if total else 0.0

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                with self.db.engine.begin() as conn:
                    conn.execute(
                        text(
                            "UPDATE imports SET heartbeat_at = now(), progress = :p "
                            "WHERE id = :id AND status = 'running'"
                        ),
                        {"id": self.import_id, "p": self.progress},
                    )
            except Exception:  # the database may be restarting: try again next beat
                log.debug("import %s: heartbeat failed", self.import_id, exc_info=True)


def run_job(db: Database, job: Job, settings: Settings) -> str:
    """Run a claimed import to ``done`` or ``failed``; the final status."""
    limits = limits_from(settings)
    try:
        with (
            _Heartbeat(db, job.id, settings.import_stale_s / 4) as beat,
            db.begin(actor=job.owner) as conn,
        ):
            file = _load_file(conn, job.id)
            try:
                report = run_import(
                    conn,
                    file,
                    filename=job.filename,
                    options=job.options,
                    limits=limits,
                    import_id=job.id,
                    progress=beat.update,
                )
            finally:
                file.close()
            finish(conn, job.id, status="done", report=report.as_dict())
        return "done"
    except MakaziError as exc:
        failure = exc
    except OSError as exc:
        if not no_space(exc):
            raise
        # the staging area (MAKAZI_SPOOL_DIR) filled: the import's transaction is rolled
        # back and its temporary files are gone; the job fails for good, as a 507 would
        log.error("import %s: no space left to stage it (%s)", job.id, exc)
        failure = out_of_space()
    body = failure.report.as_dict() if isinstance(failure, ImportRefused) else Report().as_dict()
    body.update(
        {"status": failure.status, "type": f"/problems/{failure.slug}", "detail": failure.detail}
    )
    body.update({k: v for k, v in failure.extra.items() if k not in body and v is not None})
    with db.begin() as conn:
        finish(conn, job.id, status="failed", report=body)
    return "failed"


def run_next(db: Database, settings: Settings, *, worker: str | None = None) -> int | None:
    """Claim and run one import; its id, or None when there was nothing to do."""
    with db.begin() as conn:
        job = claim(
            conn,
            worker=worker or _worker_name(),
            stale_s=settings.import_stale_s,
            max_attempts=settings.import_max_attempts,
        )
    if job is None:
        return None
    run_job(db, job, settings)
    return job.id


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


class ImportWorker:
    """Threads that run queued imports inside ``makazi serve`` (``import_workers`` of them)."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, name=f"import-worker-{n}", daemon=True)
            for n in range(settings.import_workers)
        ]

    def start(self) -> ImportWorker:
        """Start the threads."""
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Ask the threads to stop after their current import, and wait a moment for them."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                ran = run_next(self.db, self.settings)
            except Exception:
                log.exception("import worker: an import failed unexpectedly")
                ran = None
            if ran is None:
                self._stop.wait(self.settings.import_poll_s)
