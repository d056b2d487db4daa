"""What every analysis shares: vocabularies, parameter checks, timeouts, streaming.

Nothing here formats a value into SQL: statements are constant text with bound
parameters, and the SQL fragments below are constants too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy import Connection, TextClause, text

from geo.core.crs import METRIC_SRID
from geo.core.db import Database
from geo.core.errors import BadRequest, MakaziError, NotFound
from geo.layers.as_of import plan_for_snapshots
from geo.layers.registry import ENUMS

__all__ = [
    "FACILITY_TYPES",
    "HOUSEHOLDS_OF_T",
    "VERIFIED_HOUSEHOLD",
    "VERIFIED_STRUCTURE",
    "STRUCTURE_USES",
    "WITHIN_SETTLEMENT",
    "check_facility_type",
    "check_range",
    "fetch_json",
    "require_settlement",
    "set_timeout",
    "settlement_name",
    "sql",
    "stream_features",
]

"""WGS 84 / UTM zone 37S: the metric CRS for Nairobi."""

FACILITY_TYPES: tuple[str, ...] = ENUMS["type"]
"""Facility types (the layers' vocabulary)."""
STRUCTURE_USES: tuple[str, ...] = ENUMS["use"]
"""Structure uses (the layers' vocabulary)."""

# A structure ``t`` lies within settlement ``s`` when ``s`` holds the largest
# share of its footprint among all live settlements.  Nested and contested
# boundaries that hold the same (largest) share each count it, so every
# settlement counts what it covers; a structure straddling two neighbours counts
# once, in the one that holds more of it.  Structures wholly inside ``s`` (the
# common case) never reach the area comparison.
WITHIN_SETTLEMENT = """
    t.deleted_at IS NULL
    AND t.geom && s.geom
    AND ST_Intersects(t.geom, s.geom)
    AND (ST_Within(t.geom, s.geom)
         OR NOT EXISTS (
             SELECT 1 FROM settlements o
             WHERE o.deleted_at IS NULL AND o.id <> s.id AND o.geom && t.geom
               AND ST_Area(ST_Transform(ST_Intersection(t.geom, o.geom), {srid}))
                   > ST_Area(ST_Transform(ST_Intersection(t.geom, s.geom), {srid}))))
"""

# ``verified=true``: only rows the community verified count (bound parameter
# ``:verified``).  A structure ``t``'s households are then its verified ones.
VERIFIED_STRUCTURE = " AND (NOT :verified OR t.review_state = 'verified')"
VERIFIED_HOUSEHOLD = " AND (NOT :verified OR h.review_state = 'verified')"
HOUSEHOLDS_OF_T = """(CASE WHEN :verified THEN (
        SELECT count(*) FROM households h
        WHERE h.structure_id = t.id AND h.deleted_at IS NULL AND h.review_state = 'verified')
    ELSE t.households END)"""


def sql(*fragments: str) -> TextClause:
    """A statement joined from constant SQL fragments of this package (never from input).

    ``{srid}`` in a fragment stands for :data:`~geo.core.crs.METRIC_SRID`, the CRS
    where metres are measured.

    >>> str(sql("SELECT 1", " AS one"))
    'SELECT 1 AS one'
    >>> str(sql("SELECT ST_Transform(geom, {srid})"))
    'SELECT ST_Transform(geom, 32737)'
    """
    return text("".join(fragments).replace("{srid}", str(METRIC_SRID)))


def set_timeout(conn: Connection, timeout_ms: int) -> None:
    """Limit every statement of the current transaction to ``timeout_ms``.

    A statement that runs longer is cancelled by PostgreSQL
    (``QueryCanceled``); the HTTP layer answers 503 with a problem.  The
    transaction also asks for custom plans: an analysis's plan depends on its
    input geometry, which the planner folds to a constant only in a custom plan.
    And an analysis's rows are all read, so a streamed one (a server-side cursor,
    which PostgreSQL plans for its first tenth) is planned for all of them.
    """
    conn.execute(
        text(
            "SELECT set_config('statement_timeout', :ms, true), "
            "set_config('plan_cache_mode', 'force_custom_plan', true), "
            "set_config('cursor_tuple_fraction', '1', true)"
        ),
        {"ms": str(int(timeout_ms))},
    )


def fetch_json(
    db: Database,
    statement: TextClause,
    params: Mapping[str, Any],
    *,
    timeout_ms: int,
    cached: bool = False,
    as_of: bool = False,
) -> Any:
    """Run a statement that returns one JSON value (or no row: None) under the timeout.

    ``cached``: answer from ``db.answers`` (:mod:`geo.core.answers`) while the layers
    the analyses read have not changed; only for statements that read nothing else.
    ``as_of``: the statement reads the layers of a past moment
    (:func:`geo.layers.as_of.plan_for_snapshots`).
    """
    with db.read() as conn:
        set_timeout(conn, timeout_ms)
        if as_of:
            plan_for_snapshots(conn)
        if cached:
            return db.answers.fetch(conn, statement, params)
        value = conn.execute(statement, dict(params)).scalar_one_or_none()
    return json.loads(value) if isinstance(value, str) else value


def stream_features(
    db: Database,
    statement: TextClause,
    params: Mapping[str, Any],
    *,
    timeout_ms: int,
    batch: int = 2_000,
) -> Iterator[bytes]:
    """A GeoJSON FeatureCollection whose features PostGIS builds, streamed in batches.

    ``statement`` returns one column of Feature JSON text per row.  The first
    batch is fetched before anything is yielded, so a timeout or a database
    error while the query plans and starts surfaces as an exception from the
    first ``next()``: callers prime the iterator before sending headers.
    Memory stays bounded by ``batch`` rows whatever the result size.
    """
    with db.read() as conn:
        set_timeout(conn, timeout_ms)
        result = conn.execute(
            statement,
            dict(params),
            execution_options={"stream_results": True, "yield_per": batch},
        )
        try:
            rows = result.fetchmany(batch)
            yield b'{"type":"FeatureCollection","features":['
            count = 0
            while rows:
                chunk = ",".join(row[0] for row in rows)
                yield ((b"," if count else b"") + chunk.encode())
                count += len(rows)
                rows = result.fetchmany(batch)
            yield f'],"numberReturned":{count}}}'.encode()
        finally:
            result.close()


_SETTLEMENT = text("SELECT name FROM settlements WHERE id = :id AND deleted_at IS NULL")


def settlement_name(conn: Connection, settlement_id: int, *, field: str = "settlement_id") -> str:
    """The name of a live settlement; :class:`NotFound` naming ``field`` when absent."""
    if not -(2**63) <= settlement_id < 2**63:
        raise NotFound(f"{field}: no settlement {settlement_id}", field=field)
    name = conn.execute(_SETTLEMENT, {"id": settlement_id}).scalar_one_or_none()
    if name is None:
        raise NotFound(f"{field}: no settlement {settlement_id}", field=field)
    return str(name)


def require_settlement(db: Database, settlement_id: int, *, field: str = "settlement_id") -> str:
    """:func:`settlement_name` on a read connection of ``db``."""
    with db.read() as conn:
        return settlement_name(conn, settlement_id, field=field)


def check_facility_type(
    value: str, *, field: str = "facility_type", error: type[MakaziError] = BadRequest
) -> str:
    """``value`` when it is a known facility type, else ``error`` naming ``field``.

    >>> check_facility_type("water_point")
    'water_point'
    """
    if value not in FACILITY_TYPES:
        raise error(
            f"{field}: unknown facility type {value!r}; one of {', '.join(FACILITY_TYPES)}",
            field=field,
        )
    return value


def check_range(
    value: float,
    *,
    field: str,
    low: float,
    high: float,
    error: type[MakaziError] = BadRequest,
    unit: str = "m",
    setting: str | None = None,
) -> float:
    """``value`` when ``low < value <= high`` (and finite), else ``error`` naming ``field``.

    ``error`` is :class:`BadRequest` for a query parameter, :class:`InvalidInput`
    for a field of a JSON body.

    >>> check_range(30, field="buffer_m", low=0, high=5000)
    30.0
    """
    number = float(value)
    if not math.isfinite(number) or number <= low:
        raise error(f"{field}: must be a number greater than {low:g} {unit}", field=field)
    if number > high:
        where = f" (setting MAKAZI_{setting.upper()})" if setting else ""
        raise error(
            f"{field}: {number:g} {unit} is above the limit of {high:g} {unit}{where}", field=field
        )
    return number
