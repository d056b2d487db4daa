"""The demo generator: deterministic, valid, realistic, loadable."""

from __future__ import annotations

import numpy as np
import shapely
from pyproj import Geod
from sqlalchemy import Connection, text

from geo.demo.generator import generate
from geo.demo.loader import is_empty, load


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b, c = generate(3000, seed=11), generate(3000, seed=11), generate(3000, seed=12)
    for sa, sb in zip(a.settlements, b.settlements, strict=True):
        assert sa.boundary.equals_exact(sb.boundary, 0)
        assert np.array_equal(shapely.to_wkb(sa.footprints), shapely.to_wkb(sb.footprints))
        assert sa.numbers == sb.numbers
    assert a.household_names == b.household_names
    assert not a.settlements[0].boundary.equals(c.settlements[0].boundary)


def test_exact_count_valid_inside_and_not_overlapping() -> None:
    data = generate(5000, seed=3)
    assert data.structure_count == 5000
    everything = []
    for s in data.settlements:
        assert s.boundary.is_valid
        assert shapely.is_valid(s.footprints).all()
        assert shapely.within(s.footprints, s.boundary).all()
        assert len(set(s.numbers)) == len(s.numbers)
        everything.append(s.footprints)
    footprints = np.concatenate(everything)
    tree = shapely.STRtree(footprints)
    assert len(tree.query(footprints, predicate="overlaps")[0]) == 0


def test_footprints_are_small_like_real_structures() -> None:
    data = generate(2000, seed=5)
    geod = Geod(ellps="WGS84")
    areas = np.array(
        [abs(geod.geometry_area_perimeter(p)[0]) for p in data.settlements[0].footprints]
    )
    assert 8 <= np.median(areas) <= 30
    assert np.mean((areas >= 8) & (areas <= 30)) > 0.8


def test_one_pair_of_boundaries_overlaps() -> None:
    data = generate(4000, seed=7)
    bounds = [s.boundary for s in data.settlements]
    pairs = [
        (i, j)
        for i in range(len(bounds))
        for j in range(i + 1, len(bounds))
        if bounds[i].intersection(bounds[j]).area > 0
    ]
    assert len(pairs) == 1
    names = {data.settlements[i].name for i in pairs[0]}
    assert names == {"Mukuru kwa Njenga (demo)", "Mukuru kwa Reuben (demo)"}


def test_numbers_look_painted() -> None:
    import re

    data = generate(1000, seed=1)
    assert all(
        re.fullmatch(r"[A-Z]{2}-\d{2,}-\d{4}", n) for s in data.settlements for n in s.numbers
    )


def test_load_writes_consistent_rows(connection: Connection) -> None:
    assert is_empty(connection)
    data = generate(1500, seed=9)
    counts = load(connection, data)
    assert counts["structures"] == 1500
    db_counts = connection.execute(
        text(
            "SELECT (SELECT count(*) FROM structures), (SELECT count(*) FROM households), "
            "(SELECT sum(households) FROM structures), (SELECT count(*) FROM facilities)"
        )
    ).one()
    assert db_counts[0] == 1500
    assert db_counts[1] == counts["households"] == db_counts[2]
    assert db_counts[3] == counts["facilities"]
    outside = connection.execute(
        text(
            "SELECT count(*) FROM structures st JOIN settlements s ON s.id = st.settlement_id "
            "WHERE NOT ST_Within(st.geom, s.geom)"
        )
    ).scalar()
    assert outside == 0
    traces = connection.execute(
        text(
            "SELECT count(*) FILTER (WHERE visibility = 'public'), min(points), count(*) "
            "FROM traces"
        )
    ).one()
    assert traces[0] == traces[2] == counts["traces"] == len(data.walks) and traces[1] > 10
    kinds = set(connection.execute(text("SELECT DISTINCT type FROM facilities")).scalars())
    assert {"water_point", "toilet_block", "school", "road", "drainage"} <= kinds
    # new rows after the demo get ids past the demo's block
    new_id = connection.execute(
        text(
            "INSERT INTO structures (geom) "
            "VALUES (ST_GeomFromText('POINT(36.7 -1.3)', 4326)) RETURNING id"
        )
    ).scalar()
    assert new_id == connection.execute(text("SELECT max(id) FROM structures")).scalar()
    assert not is_empty(connection)


def test_demo_rows_have_their_history(connection: Connection) -> None:
    """README says every change is audited: the demo's rows have their 'create' entry."""
    load(connection, generate(300, seed=4))
    rows = connection.execute(
        text(
            "SELECT collection, count(*) AS n, min(version) AS v, "
            "bool_and(action = 'create' AND changed_by = 'makazi-demo') AS by_demo "
            "FROM feature_history GROUP BY collection"
        )
    ).all()
    history = {row.collection: row for row in rows}
    live = connection.execute(
        text(
            "SELECT (SELECT count(*) FROM structures), (SELECT count(*) FROM settlements), "
            "(SELECT count(*) FROM facilities)"
        )
    ).one()
    assert history["structures"].n == live[0] and history["settlements"].n == live[1]
    assert history["facilities"].n == live[2]
    assert all(row.v == 1 and row.by_demo for row in rows if row.collection != "traces")
