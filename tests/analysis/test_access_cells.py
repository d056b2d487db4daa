"""Access over the grid of cells: the same answer as a plain ``ST_DWithin(geography)``.

``geo.analysis.access`` decides most structures against unions of facility
buffers made per grid cell (0.01 degree, or four distances).  Generated data
around the cell corner at (36.80, -1.30): structures scattered over four cells,
some laid across a cell edge or on the corner, water points in every cell and
near the edges (a quarter of them broken), and two neighbouring settlements
whose border runs through the middle of a cell, so a settlement's structures
have water points just across the border.  The reference asks PostGIS, for
each structure, whether any usable water point lies within the distance on
the ellipsoid, with no buffers, cells or unions.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import Connection, text

from geo.analysis.access import access, access_features
from geo.core.settings import Settings
from tests.support.db import BoundDatabase

CORNER = (36.80, -1.30)  # a corner of four 0.01-degree cells
SPREAD = 0.008  # degrees around the corner (about 900 m)
BORDER = 36.805  # the settlements' shared border, inside the eastern cells

_REFERENCE = text(
    """
    SELECT t.id FROM structures t
    WHERE t.deleted_at IS NULL
      AND (CAST(:settlement AS bigint) IS NULL OR t.settlement_id = :settlement)
      AND NOT EXISTS (
        SELECT 1 FROM facilities f
        WHERE f.deleted_at IS NULL AND f.type = 'water_point'
          AND f.condition IS DISTINCT FROM 'broken'
          AND ST_DWithin(f.geom::geography, t.geom::geography, :d))
    ORDER BY t.id
    """
)


def _square(x: float, y: float, half: float) -> str:
    return (
        f"POLYGON(({x - half} {y - half},{x + half} {y - half},{x + half} {y + half},"
        f"{x - half} {y + half},{x - half} {y - half}))"
    )


def _settlement(conn: Connection, name: str, west: float, east: float) -> int:
    south, north = CORNER[1] - 0.01, CORNER[1] + 0.01
    return int(
        conn.execute(
            text(
                "INSERT INTO settlements (name, status, geom) VALUES (:n, 'contested', "
                "ST_Multi(ST_MakeEnvelope(:w, :s, :e, :no, 4326))) RETURNING id"
            ),
            {"n": name, "w": west, "s": south, "e": east, "no": north},
        ).scalar_one()
    )


@pytest.fixture
def scattered(connection: Connection) -> dict[str, int]:
    """Structures and water points around the cell corner; the settlements' ids."""
    rng = np.random.default_rng(18)
    west = _settlement(connection, "Cells west", CORNER[0] - 0.01, BORDER)
    east = _settlement(connection, "Cells east", BORDER, CORNER[0] + 0.01)
    x0, y0 = CORNER
    origin = np.array(CORNER)
    centres = [(float(x), float(y)) for x, y in rng.uniform(-SPREAD, SPREAD, (500, 2)) + origin]
    # across the cell edges and on the corner (half-width 3 m > the offset)
    centres += [(x0 + float(d), y0 + float(e)) for d, e in rng.uniform(-SPREAD, SPREAD, (40, 2))]
    centres += [
        (x0 + float(o), float(y))
        for o, y in zip(
            rng.uniform(-1e-5, 1e-5, 40), rng.uniform(y0 - SPREAD, y0 + SPREAD, 40), strict=True
        )
    ]
    centres += [
        (float(x), y0 + float(o))
        for x, o in zip(
            rng.uniform(x0 - SPREAD, x0 + SPREAD, 40), rng.uniform(-1e-5, 1e-5, 40), strict=True
        )
    ]
    centres.append((x0, y0))
    structures = [
        {"w": _square(x, y, 0.000027), "s": west if x < BORDER - 0.00003 else east}
        for x, y in centres
        if abs(x - BORDER) > 0.00003
    ]
    connection.execute(
        text(
            "INSERT INTO structures (use, settlement_id, geom) "
            "VALUES ('residential', :s, ST_GeomFromText(:w, 4326))"
        ),
        structures,
    )
    points = rng.uniform(-SPREAD, SPREAD, (60, 2)) + origin
    # water points close to the edges, on both sides
    points[:10, 0] = x0 + rng.uniform(-0.0004, 0.0004, 10)
    points[10:20, 1] = y0 + rng.uniform(-0.0004, 0.0004, 10)
    points[20:26, 0] = BORDER + rng.uniform(-0.0006, 0.0006, 6)
    connection.execute(
        text(
            "INSERT INTO facilities (type, condition, geom) "
            "VALUES ('water_point', :c, ST_SetSRID(ST_MakePoint(:x, :y), 4326))"
        ),
        [
            {"c": "broken" if n % 4 == 3 else "working", "x": float(x), "y": float(y)}
            for n, (x, y) in enumerate(points)
        ],
    )
    return {"west": west, "east": east}


def test_access_cells_match_plain_dwithin(
    db: BoundDatabase, connection: Connection, scattered: dict[str, int], settings: Settings
) -> None:
    crossing = connection.execute(
        text(
            "SELECT count(*) FROM structures WHERE deleted_at IS NULL AND "
            "(floor(ST_XMin(geom) / 0.01) <> floor(ST_XMax(geom) / 0.01) OR "
            "floor(ST_YMin(geom) / 0.01) <> floor(ST_YMax(geom) / 0.01))"
        )
    ).scalar_one()
    assert crossing >= 40  # structures across a cell edge take the exact path
    seen_beyond: set[int] = set()
    for distance in (35.0, 80.0, 150.0, 400.0):
        for settlement in (None, scattered["west"], scattered["east"]):
            expected = list(
                connection.execute(_REFERENCE, {"d": distance, "settlement": settlement}).scalars()
            )
            total = connection.execute(
                text(
                    "SELECT count(*) FROM structures WHERE deleted_at IS NULL "
                    "AND (CAST(:s AS bigint) IS NULL OR settlement_id = :s)"
                ),
                {"s": settlement},
            ).scalar_one()
            counts = access(
                db,
                facility_type="water_point",
                max_distance_m=distance,
                settlement_id=settlement,
                settings=settings,
                role="admin",
            )
            assert counts["structures_total"] == total
            assert counts["structures_beyond"] == len(expected), (distance, settlement)
            body = b"".join(
                access_features(
                    db,
                    facility_type="water_point",
                    max_distance_m=distance,
                    settlement_id=settlement,
                    settings=settings,
                )
            )
            ids = [feature["id"] for feature in json.loads(body)["features"]]
            assert ids == expected, (distance, settlement)
            seen_beyond.update(expected)
            if settlement is None and distance == 80.0:
                assert 0 < len(expected) < total  # the case is not trivially all or none
    assert seen_beyond
