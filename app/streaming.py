"""Streamed bodies whose database connection is returned however the response ends.

Streaming handlers run their query (so SQL errors still become problem
responses) and then hand the rows to :class:`ClosingStreamingResponse`; the
connection stays open while the body streams. Starlette's own
``StreamingResponse`` leaves a sync generator suspended when the client goes
away (its ``finally`` runs only when the garbage collector gets to it, which
left export cursors ``idle in transaction`` for many minutes);
:class:`ClosingStreamingResponse` closes the generator, and so its cursor and
connection, the moment the response ends: sent, failed or abandoned.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
from fastapi.responses import FileResponse, StreamingResponse
from sqlalchemy import Connection
from starlette.types import Receive, Scope, Send

from geo.core.db import Database

__all__ = ["ClosingStreamingResponse", "HeldRead", "PinnedFileResponse"]


class ClosingStreamingResponse(StreamingResponse):
    """A streamed response of a sync iterator that is closed whenever the response ends.

    Each chunk is produced in a worker thread (the iterator may block on the
    database); when the response is done, fails or is cancelled because the
    client disconnected, the iterator's ``close()`` runs (shielded from the
    cancellation) so its ``finally`` blocks return cursors and connections at once.
    """

    def __init__(self, content: Iterable[bytes], **kwargs: Any) -> None:
        self._chunks = iter(content)
        super().__init__(self._produce(), **kwargs)

    async def _produce(self) -> AsyncIterator[bytes]:
        while True:
            # not abandoned on cancellation: a running next() finishes before close() runs
            chunk = await anyio.to_thread.run_sync(next, self._chunks, None)
            if chunk is None:
                return
            yield chunk

    def _close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._close)


class HeldRead:
    """``db.read()`` opened now and closed after :meth:`stream` ends (or on error).

    Use as ``with HeldRead(db) as held:`` around the work before the response:
    an exception closes the connection; a normal exit leaves it open for
    :meth:`stream`.
    """

    def __init__(self, db: Database) -> None:
        self._context: AbstractContextManager[Connection] = db.read()
        self.conn = self._context.__enter__()
        self._open = True

    def close(self) -> None:
        """Return the connection (idempotent)."""
        if self._open:
            self._open = False
            self._context.__exit__(None, None, None)

    def __enter__(self) -> HeldRead:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if kind is not None:
            self.close()

    def stream(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Yield ``chunks``, then close the connection whatever happens.

        A failure while streaming goes through ``db.read()`` (so a lost replica
        marks the request's route ``lost``) before it propagates.
        """
        try:
            yield from chunks
        except Exception as exc:
            if self._open:
                self._open = False
                self._context.__exit__(type(exc), exc, exc.__traceback__)
            raise
        finally:
            self.close()


class PinnedFileResponse(FileResponse):
    """A file sent from a private hard link (a pin) that is removed however the response ends.

    The pin was made by the handler, so the file exists when the response opens it
    even if the original was replaced and deleted in between; Range requests work as
    with :class:`~starlette.responses.FileResponse`.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            Path(self.path).unlink(missing_ok=True)
