"""GDAL exports in worker processes, at most N at a time, cancellable.

GDAL's writers hold the interpreter while they work (the KML writer once froze
the whole service for half an hour).  A :class:`ExportJob` runs
:func:`geo.exports.gdal.write_file` in a separate process with its own
database connection and a temporary folder; the service waits for it without
blocking, streams the file, and :meth:`ExportJob.close` kills the process if it
still runs and removes the folder, however the request ends (done, client gone,
server stopping).  A worker also stops by itself when its parent process dies,
and on Ctrl-C like its parent.

:class:`ExportWorkers` bounds how many run at once (``MAKAZI_EXPORT_WORKERS``
per server process); a request beyond that is answered 503 with Retry-After
at once rather than queued, so no request thread waits on another's export.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from geo.core.auth import Principal
from geo.core.errors import Unavailable

__all__ = ["ExportJob", "ExportTask", "ExportWorkers", "export_workers", "run_task"]

log = logging.getLogger("makazi.exports")

# Workers fork from a fork server: a clean process started (fork + exec, never a fork
# of the threaded service) on the first export, that has imported GDAL, numpy and
# SQLAlchemy once, so a worker starts in milliseconds instead of re-importing them
# (seconds).  The fork server ignores Ctrl-C and ends when the service does.
_WORKERS = multiprocessing.get_context("forkserver")
_WORKERS.set_forkserver_preload(
    ["geo.exports.worker", "geo.exports.gdal", "pyogrio.raw", "numpy", "psycopg", "sqlalchemy"]
)
ERROR_FILE = "error.txt"
DONE_FILE = "done.txt"


@dataclass(frozen=True)
class ExportTask:
    """Everything a worker needs (it shares no memory with the service)."""

    database_url: str  # an SQLAlchemy URL with its driver (the app engine's)
    collection: str
    format: str
    user: Principal | None
    settlement_id: int | None
    timeout_ms: int
    batch: int


def run_task(task: ExportTask, workdir: Path, parent_pid: int) -> None:
    """The worker process: write the export into ``workdir`` and name it in ``done.txt``.

    A failure is written to ``error.txt`` and ends the process with status 1.
    """
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from geo.core.db import set_statement_timeout
    from geo.exports.gdal import write_file
    from geo.exports.query import ExportRows
    from geo.layers.registry import COLLECTIONS

    def parent_alive() -> None:
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            raise SystemExit(3) from None

    try:
        engine = create_engine(
            task.database_url,
            poolclass=NullPool,
            connect_args={"connect_timeout": 5, "application_name": "makazi-export"},
        )
        with engine.connect() as conn:
            set_statement_timeout(conn, task.timeout_ms)
            rows = ExportRows(
                COLLECTIONS[task.collection], task.user, task.settlement_id, task.batch
            )
            path = write_file(conn, rows, task.format, workdir, on_batch=parent_alive)
            conn.rollback()
        engine.dispose()
        (workdir / DONE_FILE).write_text(path.name)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        (workdir / ERROR_FILE).write_text(f"{type(exc).__name__}: {exc}"[:2000])
        sys.exit(1)


def _main(task: ExportTask, workdir: str, parent_pid: int) -> None:
    # Ctrl-C in a terminal reaches the whole process group: end quietly, the parent cleans up
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
    run_task(task, Path(workdir), parent_pid)


class ExportJob:
    """One export running in a worker process; :meth:`close` exactly once, always."""

    def __init__(self, task: ExportTask, release: threading.Semaphore) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="makazi-export-"))
        self._release = release
        self._closed = False
        self.process = _WORKERS.Process(
            target=_main, args=(task, str(self.workdir), os.getpid()), daemon=True
        )
        try:
            self.process.start()
        except BaseException:
            self.close()
            raise

    @property
    def finished(self) -> bool:
        """Whether the worker has ended (successfully or not)."""
        return self.process.exitcode is not None

    def result(self) -> Path:
        """The written file, once :attr:`finished`.

        Raises
        ------
        Unavailable
            When the worker failed or was stopped (503: the export can be retried).
        """
        done = self.workdir / DONE_FILE
        if self.process.exitcode == 0 and done.exists():
            return self.workdir / done.read_text()
        error = self.workdir / ERROR_FILE
        reason = error.read_text() if error.exists() else f"exit status {self.process.exitcode}"
        log.error("export worker failed: %s", reason)  # the reason may name hosts: log only
        raise Unavailable("the export could not be written; try again", retry_after_s=10)

    def close(self) -> None:
        """Stop the worker if it still runs, remove its files and free its slot."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.process.pid is not None and self.process.exitcode is None:
                self.process.kill()
                self.process.join(timeout=10)
        finally:
            # the slot first: once the folder is gone, the slot is free (what a client
            # retrying after the 503, or a test, can observe)
            self._release.release()
            shutil.rmtree(self.workdir, ignore_errors=True)


class ExportWorkers:
    """At most ``limit`` export workers at once in this process."""

    def __init__(self, limit: int, retry_after_s: int = 10) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self._slots = threading.BoundedSemaphore(limit)

    def start(self, task: ExportTask) -> ExportJob:
        """Start ``task`` in a worker.

        Raises
        ------
        Unavailable
            (503, Retry-After) when ``limit`` exports are already being written.
        """
        if not self._slots.acquire(blocking=False):
            raise Unavailable(
                f"{self.limit} exports are being written (MAKAZI_EXPORT_WORKERS); "
                f"try again in {self.retry_after_s} s",
                retry_after_s=self.retry_after_s,
            )
        return ExportJob(task, self._slots)


@lru_cache(maxsize=8)
def export_workers(limit: int) -> ExportWorkers:
    """This process's worker pool for ``limit`` (one per setting value)."""
    return ExportWorkers(limit)
