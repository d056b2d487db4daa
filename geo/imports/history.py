"""History rows of a bulk insert, written in one statement instead of by the audit trigger.

The audit trigger (``makazi_audit``) writes a ``create`` row per inserted
feature with ``snapshot = to_jsonb(row)`` (and, since migration 0024, ``changes``
NULL: readers derive it from the snapshot with ``makazi_history_changes``).
``to_jsonb`` turns each geometry into GeoJSON through PostGIS's ``geometry::json``
cast, which looks the CRS up in ``spatial_ref_sys`` every time.
:func:`insert_audited` pauses the trigger for its one statement
(``makazi.audit = off``) and writes the same rows itself: the columns spelt
out, the geometry through ``ST_AsGeoJSON`` with the CRS member as a constant.
The rows are identical in content (a test compares them with the trigger's).
"""

# ruff: noqa: S608 -- SQL text here is built only from catalogue column names
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, text

__all__ = ["audit_paused", "insert_audited"]

#: What ``to_jsonb`` gives an EPSG:4326 geometry ahead of its type and coordinates.
CRS_MEMBER = """'{"crs":{"type":"name","properties":{"name":"EPSG:4326"}},'"""


@contextmanager
def audit_paused(conn: Connection) -> Iterator[None]:
    """Let the audit triggers skip the statements run inside (this transaction only)."""
    before = conn.execute(text("SELECT current_setting('makazi.audit', true)")).scalar()
    conn.execute(text("SELECT set_config('makazi.audit', 'off', true)"))
    try:
        yield
    finally:
        conn.execute(text("SELECT set_config('makazi.audit', :v, true)"), {"v": before or ""})


def _columns(conn: Connection, table: str) -> list[tuple[str, str]]:
    """(name, type) of the table's columns, in order."""
    rows = conn.execute(
        text(
            "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute "
            "WHERE attrelid = CAST(:t AS regclass) AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum"
        ),
        {"t": table},
    ).all()
    return [(str(name), str(kind)) for name, kind in rows]


def _geojson(name: str) -> str:
    """A geometry column as ``to_jsonb`` renders it, without the per-row CRS look-up."""
    return (
        f"CASE WHEN n.{name} IS NOT NULL "
        f"THEN ({CRS_MEMBER} || substr(ST_AsGeoJSON(n.{name}, 15, 0), 2))::jsonb END"
    )


def insert_audited(
    conn: Connection, table: str, insert: str, parameters: dict[str, Any] | None = None
) -> int:
    """Run ``insert`` (an ``INSERT INTO table ...``) with its history rows; rows inserted.

    ``insert`` must not have a ``RETURNING`` clause; each row it inserts gets the
    ``create`` row the audit trigger would have written.
    """
    if table == "traces":
        raise ValueError("traces keep their geometry out of history: use the trigger")
    columns = _columns(conn, table)
    snapshot = ", ".join(
        f"'{name}', {_geojson(name) if kind == 'geometry' else f'n.{name}'}"
        for name, kind in columns
    )
    statement = f"""
        WITH created AS ({insert} RETURNING *)
        INSERT INTO feature_history (collection, feature_id, version, action, changed_by,
                                     snapshot)
        SELECT '{table}', n.id, n.version, 'create', makazi_actor(), jsonb_build_object({snapshot})
        FROM created n
    """
    with audit_paused(conn):
        return int(conn.execute(text(statement), parameters or {}).rowcount)
