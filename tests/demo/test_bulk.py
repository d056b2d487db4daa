"""The streamed bulk demo generator: same shapes as the generator's, right counts, flat."""

from __future__ import annotations

import re

import numpy as np
import shapely
from sqlalchemy import Connection, text

from geo.demo.bulk import MAX_SETTLEMENTS, batches, ewkb_hex, load_bulk, places


def test_same_seed_same_batches_and_exact_count() -> None:
    a, b = list(batches(4000, seed=5)), list(batches(4000, seed=5))
    other = list(batches(4000, seed=6))
    assert sum(len(x.rings) for x in a) == 4000
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.rings, y.rings)
        assert np.array_equal(x.numbers, y.numbers)
    assert not np.array_equal(a[0].rings, other[0].rings)


def test_footprints_valid_inside_unique_numbers() -> None:
    for batch in batches(3000, seed=2):
        polygons = shapely.polygons(batch.rings)
        assert shapely.is_valid(polygons).all()
        assert shapely.within(polygons, batch.boundary).all()
        numbers = [n.decode() for n in batch.numbers]
        assert len(set(numbers)) == len(numbers)
        assert all(re.fullmatch(r"[A-Z]{2}-\d{2,}-\d{4}", n) for n in numbers)
        tree = shapely.STRtree(polygons)
        assert len(tree.query(polygons, predicate="overlaps")[0]) == 0


def test_hex_ewkb_is_what_shapely_writes() -> None:
    rings = next(batches(500, seed=1)).rings
    expected = shapely.to_wkb(
        shapely.set_srid(shapely.polygons(rings), 4326), hex=True, include_srid=True
    )
    assert [value.decode() for value in ewkb_hex(rings)] == list(expected)


def test_more_settlements_as_the_count_grows_and_none_collide() -> None:
    assert len(places(1_000_000)) == 5
    big = places(10_000_000)
    assert len(big) == MAX_SETTLEMENTS
    assert len({p.name for p in big}) == len(big)
    assert abs(sum(p.share for p in big) - 1) < 1e-9
    # the largest settlement at 10M spans about 2.2 km from its centre; neighbours are
    # further apart than two of those (the Mukuru pair shares a centre on purpose)
    centres = np.array([p.centre for p in big[5:]])
    gaps = np.hypot(*(centres[:, None, :] - centres[None, :, :]).transpose(2, 0, 1))
    assert gaps[~np.eye(len(centres), dtype=bool)].min() * 111_000 > 2 * 2_200


def _indexes(connection: Connection) -> set[str]:
    return set(
        connection.execute(
            text(
                "SELECT indexdef FROM pg_indexes "
                "WHERE tablename IN ('structures', 'households', 'facilities')"
            )
        ).scalars()
    )


def test_load_bulk_writes_consistent_rows(connection: Connection) -> None:
    indexes = _indexes(connection)
    counts = load_bulk(connection, 2500, seed=3)
    assert _indexes(connection) == indexes  # dropped for the load, built again
    assert counts["structures"] == 2500
    db = connection.execute(
        text(
            "SELECT (SELECT count(*) FROM structures), (SELECT count(*) FROM households), "
            "(SELECT sum(households) FROM structures), (SELECT count(*) FROM facilities), "
            "(SELECT count(*) FROM settlements)"
        )
    ).one()
    assert db[0] == 2500
    assert db[1] == counts["households"] == db[2]
    assert db[3] == counts["facilities"] and db[4] == counts["settlements"]
    wrong_count = connection.execute(
        text(
            "SELECT count(*) FROM structures s WHERE s.households <> "
            "(SELECT count(*) FROM households h WHERE h.structure_id = s.id)"
        )
    ).scalar()
    assert wrong_count == 0
    outside = connection.execute(
        text(
            "SELECT count(*) FROM structures st JOIN settlements s ON s.id = st.settlement_id "
            "WHERE NOT ST_Within(st.geom, s.geom) OR NOT ST_IsValid(st.geom)"
        )
    ).scalar()
    assert outside == 0
    stamped = connection.execute(
        text("SELECT bool_and(version = 1 AND created_by = 'makazi-demo') FROM structures")
    ).scalar()
    assert stamped
    # the household-count trigger is back on once the load is done
    sid = connection.execute(text("SELECT min(id) FROM structures")).scalar_one()
    before = connection.execute(
        text("SELECT households FROM structures WHERE id = :id"), {"id": sid}
    ).scalar_one()
    connection.execute(
        text("INSERT INTO households (structure_id, members) VALUES (:id, 3)"), {"id": sid}
    )
    after = connection.execute(
        text("SELECT households FROM structures WHERE id = :id"), {"id": sid}
    ).scalar_one()
    assert after == before + 1
