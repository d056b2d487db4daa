"""What an atlas draws: one settlement's boundary, structures and facilities, in metres.

Geometries come from PostGIS already in UTM 37S (:data:`~geo.core.crs.METRIC_SRID`),
so the pages can be laid out at a true print scale.  ``as_of`` reads the layers
as they were (:mod:`geo.layers.as_of`).  No household row is read: the atlas
carries each structure's household count, never a personal field.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import shapely
from shapely.geometry.base import BaseGeometry
from sqlalchemy import Connection, TextClause

from geo.analysis.common import HOUSEHOLDS_OF_T, WITHIN_SETTLEMENT, set_timeout, sql
from geo.core.errors import NotFound, TooLarge
from geo.layers.as_of import AS_OF_TABLES, plan_for_snapshots
from geo.profiles.review import BLOCK_SQL

__all__ = ["AtlasData", "Facility", "Structure", "load_atlas_data"]


@dataclass(frozen=True)
class Structure:
    """One structure as the atlas shows it (coordinates in metres, UTM 37S)."""

    id: int
    number: str | None
    use: str | None
    households: int
    review_state: str
    block: str | None
    x: float
    y: float
    geom: BaseGeometry


@dataclass(frozen=True)
class Facility:
    """A facility inside the boundary: type, condition and location (metres)."""

    type: str
    condition: str | None
    geom: BaseGeometry


@dataclass(frozen=True)
class AtlasData:
    """The settlement, its boundary and what lies within it."""

    settlement_id: int
    name: str
    boundary: BaseGeometry
    structures: list[Structure]
    facilities: list[Facility]


_CTES = """
s AS MATERIALIZED (
    SELECT id, name, geom FROM settlements WHERE id = :id AND deleted_at IS NULL
)
"""
_SETTLEMENT = ("SELECT s.name, ST_AsBinary(ST_Transform(s.geom, {srid})) FROM s",)
_STRUCTURES = (
    "SELECT t.id, t.structure_number, t.use, ",
    HOUSEHOLDS_OF_T,
    ", t.review_state, ",
    BLOCK_SQL,
    """, ST_X(p.p), ST_Y(p.p), ST_AsBinary(ST_Transform(t.geom, {srid}))
FROM s JOIN structures t ON """,
    WITHIN_SETTLEMENT,
    """
CROSS JOIN LATERAL (SELECT ST_Transform(ST_PointOnSurface(t.geom), {srid}) AS p) p
ORDER BY t.structure_number, t.id
LIMIT :limit
""",
)
_FACILITIES = (
    """SELECT f.type, f.condition, ST_AsBinary(ST_Transform(f.geom, {srid}))
FROM s JOIN facilities f
  ON f.deleted_at IS NULL AND f.geom && s.geom AND ST_Intersects(f.geom, s.geom)
ORDER BY f.type, f.id
""",
)


def _statement(body: tuple[str, ...], as_of: datetime | None) -> TextClause:
    if as_of is None:
        return sql("WITH ", _CTES, *body)
    return sql("WITH ", AS_OF_TABLES, ",", _CTES, *body)


def load_atlas_data(
    conn: Connection,
    *,
    settlement_id: int,
    as_of: datetime | None,
    max_structures: int,
    timeout_ms: int,
) -> AtlasData:
    """Read the settlement (as it was at ``as_of`` when given).

    Raises
    ------
    geo.core.errors.NotFound
        No live settlement ``settlement_id`` (at ``as_of``).
    geo.core.errors.TooLarge
        More than ``max_structures`` structures (``MAKAZI_ATLAS_MAX_STRUCTURES``).
    """
    set_timeout(conn, timeout_ms)
    if as_of is not None:
        plan_for_snapshots(conn)
    params = {"id": settlement_id, "as_of": as_of, "verified": False, "limit": max_structures + 1}
    head = conn.execute(_statement(_SETTLEMENT, as_of), params).first()
    if head is None:
        when = f" as of {as_of.isoformat()}" if as_of is not None else ""
        raise NotFound(f"id: no settlement {settlement_id}{when}", field="id")
    rows = conn.execute(_statement(_STRUCTURES, as_of), params).all()
    if len(rows) > max_structures:
        raise TooLarge(
            f"the settlement has more than {max_structures} structures, the most one atlas "
            "prints (MAKAZI_ATLAS_MAX_STRUCTURES)"
        )
    structures = [
        Structure(
            id=int(r[0]),
            number=r[1],
            use=r[2],
            households=int(r[3] or 0),
            review_state=r[4],
            block=r[5],
            x=float(r[6]),
            y=float(r[7]),
            geom=shapely.from_wkb(bytes(r[8])),
        )
        for r in rows
    ]
    facilities = [
        Facility(type=r[0], condition=r[1], geom=shapely.from_wkb(bytes(r[2])))
        for r in conn.execute(_statement(_FACILITIES, as_of), params)
    ]
    return AtlasData(
        settlement_id=settlement_id,
        name=str(head[0]),
        boundary=shapely.from_wkb(bytes(head[1])),
        structures=structures,
        facilities=facilities,
    )
