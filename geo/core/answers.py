"""Answers of heavy read-only statements, kept per process until the data they read changes.

A settlement summary or an access analysis costs PostgreSQL tens of
milliseconds and is asked again and again with the same parameters.  Each
answer is filed under its statement, its parameters and the change counters
(``tile_changes``, bumped by the database at every commit that edits a
layer; migration 0023 adds ``households``) of every layer such statements
read.  The counters are read on the same connection just before the
statement, and move at commit together with the data, so an answer is never
filed under counters newer than the data it holds: any committed write, by
this process, another worker or plain SQL, makes the next read miss and run
the statement again.  Nothing is ever invalidated by hand.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from cachetools import LRUCache
from sqlalchemy import Connection, TextClause, text

__all__ = ["ANSWER_LAYERS", "AnswerCache"]

ANSWER_LAYERS = ("settlements", "structures", "households", "facilities")
"""The layers whose counters key a cached answer (what the analyses read)."""

_COUNTERS = text(
    "SELECT coalesce(array_agg(counter ORDER BY collection), '{}') FROM tile_changes "
    "WHERE collection = ANY(:layers)"
)


class AnswerCache:
    """A thread-safe LRU of JSON answers keyed by statement, parameters and counters.

    Parameters
    ----------
    entries
        Answers kept at most (``MAKAZI_ANSWER_CACHE_ENTRIES``); 0 keeps none.
    """

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._answers: LRUCache[tuple[Any, ...], str] = LRUCache(maxsize=max(entries, 1))
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def fetch(self, conn: Connection, statement: TextClause, params: Mapping[str, Any]) -> Any:
        """``statement``'s one JSON value (None without a row), from the cache when fresh.

        The answer is stored as its JSON text, so every caller gets its own copy.
        """
        if self.entries == 0:
            return _decoded(conn.execute(statement, dict(params)).scalar_one_or_none())
        counters = tuple(conn.execute(_COUNTERS, {"layers": list(ANSWER_LAYERS)}).scalar_one())
        key = (statement.text, tuple(sorted(params.items())), counters)
        with self._lock:
            stored = self._answers.get(key)
            if stored is not None:
                self.hits += 1
                return json.loads(stored)
            self.misses += 1
        value = conn.execute(statement, dict(params)).scalar_one_or_none()
        encoded = value if isinstance(value, str) else json.dumps(value)
        with self._lock:
            self._answers[key] = encoded
        return json.loads(encoded)

    def clear(self) -> None:
        """Forget every answer (the counters make this unnecessary for correctness)."""
        with self._lock:
            self._answers.clear()


def _decoded(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value
