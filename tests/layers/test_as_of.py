"""The layers as of a moment (``geo.layers.as_of``): counts right, and no per-row subquery."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Connection, text

import geo.analysis.common
from geo.analysis.summary import _SUMMARY_AS_OF, summary
from geo.core.errors import NotFound
from geo.core.settings import Settings
from geo.layers.as_of import AS_OF_TABLES, plan_for_snapshots
from tests.support.db import BoundDatabase, insert_settlement

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


def _summary_plan(connection: Connection) -> str:
    params = {"id": 1, "verified": False, "as_of": "2026-01-01"}
    explain = text(f"EXPLAIN {_SUMMARY_AS_OF.text}")
    return "\n".join(row[0] for row in connection.execute(explain, params))


def test_a_past_summary_joins_households_by_hash(
    connection: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the planner guesses a few rows per snapshot CTE and joins the households of then
    # to the structures of then in a nested loop: every household for every structure
    households = "CTE Scan on households h"
    guessed = _summary_plan(connection)
    assert "Nested Loop" in guessed.split(households)[0].rsplit("->", 2)[-2], guessed
    plan_for_snapshots(connection)
    planned = _summary_plan(connection)
    join = planned.split(households)[0].rsplit("->", 2)[-2]
    assert "Hash Join" in join, planned
    # and a summary as of a moment plans so
    calls: list[Connection] = []
    monkeypatch.setattr(geo.analysis.common, "plan_for_snapshots", calls.append)
    database = BoundDatabase(connection)
    with pytest.raises(NotFound):
        summary(database, settlement_id=1, settings=Settings(), role=None, as_of=datetime.now(UTC))
    assert len(calls) == 1
