"""A settlement of two blocks (KS-01, KS-02) with households and facilities, in UTM 37S."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sqlalchemy import Connection, text

E0, N0 = 262_000.0, 9_858_000.0
USES = [
    "residential",
    "residential",
    "business",
    "residential",
    "mixed",
    "residential",
    "toilet",
    "residential",
]
SECRET_NAME, SECRET_PHONE = "Wanjiru Secretname", "+254711000999"


@dataclass
class Kisima:
    """Ids of the fixture's rows."""

    settlement: int
    blocks: dict[str, list[int]]
    numbers: dict[int, str]
    households: dict[int, list[int]]


def _box(x: float, y: float, w: float, h: float) -> dict[str, float]:
    return {"x0": E0 + x, "y0": N0 + y, "x1": E0 + x + w, "y1": N0 + y + h}


def insert_settlement(conn: Connection, name: str, x: float, y: float, w: float, h: float) -> int:
    return int(
        conn.execute(
            text(
                "INSERT INTO settlements (name, geom) VALUES (:name, ST_Multi(ST_Transform("
                "ST_MakeEnvelope(:x0, :y0, :x1, :y1, 32737), 4326))) RETURNING id"
            ),
            {"name": name, **_box(x, y, w, h)},
        ).scalar_one()
    )


def insert_structure(conn: Connection, number: str, use: str, x: float, y: float) -> int:
    return int(
        conn.execute(
            text(
                "INSERT INTO structures (structure_number, use, geom) VALUES (:n, :u, "
                "ST_Transform(ST_MakeEnvelope(:x0, :y0, :x1, :y1, 32737), 4326)) RETURNING id"
            ),
            {"n": number, "u": use, **_box(x, y, 8, 8)},
        ).scalar_one()
    )


@pytest.fixture
def kisima(connection: Connection) -> Kisima:
    """16 structures in two blocks of 8; 2 households of 3 and 5 in each residential one."""
    sid = insert_settlement(connection, "Kisima", 0, 0, 200, 120)
    blocks: dict[str, list[int]] = {}
    numbers: dict[int, str] = {}
    households: dict[int, list[int]] = {}
    for row, block in enumerate(("KS-01", "KS-02")):
        for k, use in enumerate(USES):
            number = f"{block}-{k + 1:03d}"
            tid = insert_structure(connection, number, use, 10 + 20 * k, 20 + 50 * row)
            blocks.setdefault(block, []).append(tid)
            numbers[tid] = number
            if use == "residential":
                households[tid] = [
                    int(
                        connection.execute(
                            text(
                                "INSERT INTO households (structure_id, members, head_name, "
                                "phone) VALUES (:s, :m, :name, :phone) RETURNING id"
                            ),
                            {"s": tid, "m": m, "name": SECRET_NAME, "phone": SECRET_PHONE},
                        ).scalar_one()
                    )
                    for m in (3, 5)
                ]
    for kind, condition, x in (
        ("water_point", "working", 15),
        ("water_point", "working", 95),
        ("water_point", "broken", 175),
        ("toilet_block", "working", 100),
    ):
        connection.execute(
            text(
                "INSERT INTO facilities (type, condition, geom) VALUES (:t, :c, "
                "ST_Transform(ST_SetSRID(ST_MakePoint(:x, :y), 32737), 4326))"
            ),
            {"t": kind, "c": condition, "x": E0 + x, "y": N0 + 50},
        )
    return Kisima(sid, blocks, numbers, households)


@pytest.fixture
def tiny(connection: Connection) -> int:
    """A settlement of 3 structures and 2 households: every count is small."""
    sid = insert_settlement(connection, "Tiny", 1000, 0, 100, 100)
    for k, use in enumerate(("residential", "residential", "business")):
        tid = insert_structure(connection, f"TN-01-{k + 1}", use, 1010 + 20 * k, 10)
        if use == "residential":
            connection.execute(
                text("INSERT INTO households (structure_id, members) VALUES (:s, 4)"), {"s": tid}
            )
    return sid


def backdate(conn: Connection, days: int, collection: str | None = None) -> None:
    """Move the history written so far (of ``collection``, or all) ``days`` into the past."""
    conn.execute(
        text(
            "UPDATE feature_history SET changed_at = changed_at - make_interval(days => :days) "
            "WHERE CAST(:collection AS text) IS NULL OR collection = :collection"
        ),
        {"days": days, "collection": collection},
    )
