"""The layers' change counters, read from ``tile_changes`` (also pushed by the change feed)."""

from __future__ import annotations

from sqlalchemy import Connection, text

__all__ = ["change_counters"]


def change_counters(conn: Connection) -> dict[str, int]:
    """The change counter of every tiled collection (bumped at each commit that edits it)."""
    rows = conn.execute(text("SELECT collection, counter FROM tile_changes")).all()
    return {str(name): int(counter) for name, counter in rows}
