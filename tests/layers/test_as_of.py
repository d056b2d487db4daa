"""The layers as of a moment (``geo.layers.as_of``): counts right, and no per-row subquery."""

from __future__ import annotations

from sqlalchemy import Connection, text

from geo.layers.as_of import AS_OF_TABLES
from tests.support.db import insert_settlement

_QUERY = f"WITH {AS_OF_TABLES} SELECT id, households FROM structures ORDER BY id"


def test_households_are_counted_per_structure_with_a_join(connection: Connection) -> None:
    settlement = insert_settlement(
        connection,
        "Kisima",
        "MULTIPOLYGON(((36.78 -1.32,36.80 -1.32,36.80 -1.30,36.78 -1.30,36.78 -1.32)))",
    )
    ids = [
        connection.execute(
            text(
                "INSERT INTO structures (settlement_id, structure_number, geom) VALUES "
                "(:s, :n, ST_SetSRID(ST_MakePoint(36.79, -1.31), 4326)) RETURNING id"
            ),
            {"s": settlement, "n": f"KS-{i}"},
        ).scalar_one()
        for i in range(3)
    ]
    for structure, households in zip(ids, (2, 0, 1), strict=True):
        for _ in range(households):
            connection.execute(
                text("INSERT INTO households (structure_id, members) VALUES (:s, 3)"),
                {"s": structure},
            )
    now = connection.execute(text("SELECT statement_timestamp()")).scalar_one()
    rows = connection.execute(text(_QUERY), {"as_of": now}).all()
    assert [(row.id, row.households) for row in rows] == list(zip(ids, (2, 0, 1), strict=True))
    # a count per structure as a correlated subquery over the households CTE (which has no
    # index) scans every household once per structure: 20,000 demo structures took minutes
    plan = "\n".join(
        row[0] for row in connection.execute(text(f"EXPLAIN {_QUERY}"), {"as_of": now})
    )
    assert "SubPlan" not in plan, plan
