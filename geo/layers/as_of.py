"""The layers as they were at a past moment, rebuilt from ``feature_history``.

The audit trigger stores a full snapshot of a row (geometry as GeoJSON) with
every version.  :data:`AS_OF_TABLES` is SQL text for common table expressions
named ``settlements``, ``structures``, ``households`` and ``facilities`` that
hold, for each feature, its last snapshot at or before ``:as_of`` (features
deleted or purged by then left out).  Put in front of a query's own ``WITH``
list, they shadow the live tables of the same name, so one statement answers
for now or for then.  ``structures.households`` is recounted from the
households of that moment (the live column is derived and not versioned).

Rows written while auditing was switched off (``makazi.audit = off``, as in
benchmark loads) have no history and so do not appear in the past.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time

from sqlalchemy import Connection, text

from geo.core.errors import BadRequest

__all__ = ["AS_OF_TABLES", "as_of_moment", "plan_for_snapshots"]


_SNAPSHOTS = """SELECT {columns}, NULL::timestamptz AS deleted_at
    FROM (SELECT DISTINCT ON (fh.feature_id) fh.snapshot AS j, fh.action
          FROM feature_history fh
          WHERE fh.collection = '{collection}' AND fh.changed_at <= :as_of
          ORDER BY fh.feature_id, fh.id DESC) last
    WHERE last.action <> 'purge' AND last.j IS NOT NULL AND last.j ->> 'deleted_at' IS NULL"""
# A structure's household count joins the households of then, counted once per structure
# (a subquery per structure would scan that unindexed CTE once for every structure).
_COUNTED = """structures AS MATERIALIZED (
    SELECT s.*, coalesce(n.households, 0)::int AS households
    FROM ({snapshots}) s
    LEFT JOIN (SELECT structure_id, count(*) AS households FROM households
               GROUP BY structure_id) n ON n.structure_id = s.id
)"""
_GEOM = "ST_SetSRID(ST_GeomFromGeoJSON(j -> 'geom'), 4326) AS geom"
_REVIEW = "coalesce(j ->> 'review_state', 'collected') AS review_state"
_COLUMNS = {
    "settlements": (
        "(j ->> 'id')::bigint AS id",
        "j ->> 'name' AS name",
        "j ->> 'status' AS status",
        _GEOM,
    ),
    "households": (
        "(j ->> 'id')::bigint AS id",
        "(j ->> 'structure_id')::bigint AS structure_id",
        "(j ->> 'members')::int AS members",
        _REVIEW,
    ),
    "structures": (
        "(j ->> 'id')::bigint AS id",
        "(j ->> 'settlement_id')::bigint AS settlement_id",
        "j ->> 'structure_number' AS structure_number",
        "j ->> 'use' AS use",
        _REVIEW,
        _GEOM,
    ),
    "facilities": (
        "(j ->> 'id')::bigint AS id",
        "j ->> 'type' AS type",
        "j ->> 'condition' AS condition",
        _GEOM,
    ),
}


def _latest(name: str, columns: tuple[str, ...]) -> str:
    snapshots = _SNAPSHOTS.replace("{columns}", ", ".join(columns)).replace("{collection}", name)
    if name == "structures":
        return _COUNTED.replace("{snapshots}", snapshots)
    return f"{name} AS MATERIALIZED (\n    {snapshots}\n)"


# households before structures: a structure's count reads the households of then
AS_OF_TABLES = ",\n".join(_latest(name, columns) for name, columns in _COLUMNS.items())
"""CTEs shadowing the feature tables with their state at ``:as_of`` (a timestamptz)."""


def plan_for_snapshots(conn: Connection) -> None:
    """Plan the rest of the transaction for :data:`AS_OF_TABLES`: no nested loops where
    another join will do.

    PostgreSQL cannot estimate how many snapshots pass those CTEs' filters (on
    JSON), guesses a few dozen, and joins them in nested loops: every household
    against every structure of a settlement, 11 s for the demo's Kibera instead of
    0.6 s. Joins only a nested loop can do (the spatial ones) still get one.
    """
    conn.execute(text("SET LOCAL enable_nestloop = off"))


def as_of_moment(
    value: str | None, *, field: str = "as_of", end_of_day: bool = True
) -> datetime | None:
    """The moment an ``as_of`` parameter names: a date means the end of that day (UTC),
    or its start when not ``end_of_day`` (``since``: changes on that day count).

    >>> as_of_moment("2026-03-01")
    datetime.datetime(2026, 3, 1, 23, 59, 59, 999999, tzinfo=datetime.timezone.utc)
    >>> as_of_moment("2026-03-01T10:00:00+03:00").isoformat()
    '2026-03-01T10:00:00+03:00'
    >>> as_of_moment("2026-03-01", end_of_day=False).isoformat()
    '2026-03-01T00:00:00+00:00'
    >>> as_of_moment(None) is None
    True
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime.combine(day, time.max if end_of_day else time.min, tzinfo=UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest(
            f"{field}: {value!r} is not a date (YYYY-MM-DD) or an ISO 8601 date-time",
            field=field,
        ) from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
