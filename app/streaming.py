"""A read connection held from the handler until the response body has been sent.

Streaming handlers run their query (so SQL errors still become problem
responses) and then hand the rows to ``StreamingResponse``; the connection
must stay open while the body streams and be returned however it ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from types import TracebackType

from sqlalchemy import Connection

from geo.core.db import Database

__all__ = ["HeldRead"]


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
        """Yield ``chunks``, then close the connection whatever happens."""
        try:
            yield from chunks
        finally:
            self.close()
