"""Writing generated demo data with ``COPY``: settlements, structures, households, walks."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator

import shapely
from sqlalchemy import Connection, text

from geo.demo.generator import DemoData

__all__ = ["is_empty", "load"]


def _load_walks(conn: Connection, data: DemoData, settlement_ids: list[int]) -> int:
    """Upload the walks through the real trace pipeline (parse, clean, store)."""
    from geo.core.uploads import spool_stream
    from geo.traces.ingest import TraceLimits, ingest_trace

    for index, name, gpx in data.walks:
        body = spool_stream(io.BytesIO(gpx), limit=len(gpx))
        try:
            ingest_trace(
                conn,
                owner="makazi-demo",
                body=body,
                name=name,
                visibility="public",
                settlement_id=settlement_ids[index],
                limits=TraceLimits(),
            )
        finally:
            body.close()
    return len(data.walks)


def is_empty(conn: Connection) -> bool:
    """Whether the database holds no settlements and no structures yet."""
    return not conn.execute(
        text("SELECT EXISTS (SELECT 1 FROM settlements) OR EXISTS (SELECT 1 FROM structures)")
    ).scalar()


def _copy(conn: Connection, statement: str, lines: Iterator[str], batch: int = 20_000) -> None:
    """Stream tab-separated lines into ``COPY ... FROM STDIN``."""
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur, cur.copy(statement) as copy:
        buffer = io.StringIO()
        for n, line in enumerate(lines, start=1):
            buffer.write(line)
            if n % batch == 0:
                copy.write(buffer.getvalue())
                buffer = io.StringIO()
        copy.write(buffer.getvalue())


def _reserve_structure_ids(conn: Connection, count: int) -> int:
    """First id of a block of ``count`` structure ids, moved past the identity sequence."""
    conn.execute(text("LOCK TABLE structures IN SHARE ROW EXCLUSIVE MODE"))
    start = conn.execute(
        text(
            "SELECT greatest(coalesce(max(id), 0), coalesce(pg_sequence_last_value("
            "pg_get_serial_sequence('structures', 'id')), 0)) + 1 FROM structures"
        )
    ).scalar_one()
    if count:
        conn.execute(
            text("SELECT setval(pg_get_serial_sequence('structures', 'id'), :last)"),
            {"last": int(start) + count - 1},
        )
    return int(start)


def load(
    conn: Connection, data: DemoData, *, progress: bool = False, audited: bool = True
) -> dict[str, int]:
    """Write generated data with COPY inside the caller's transaction.

    Every row gets its ``create`` history entry by ``makazi-demo``, as any
    write does; ``audited=False`` (benchmarks' million-row loads) switches
    the history off for this transaction only.

    Returns
    -------
    dict
        Counts written: settlements, structures, households, facilities.
    """
    if not audited:
        conn.execute(text("SELECT set_config('makazi.audit', 'off', true)"))
    conn.execute(text("SELECT set_config('makazi.user', 'makazi-demo', true)"))
    settlement_ids = []
    for s in data.settlements:
        settlement_ids.append(
            conn.execute(
                text(
                    "INSERT INTO settlements (name, alt_names, county, ward, status, source, "
                    "notes, geom) VALUES (:name, :alt, 'Nairobi', :ward, :status, "
                    "'makazi demo generator', :notes, ST_GeomFromText(:wkt, 4326)) RETURNING id"
                ),
                {
                    "name": s.name,
                    "alt": list(s.alt_names),
                    "ward": s.ward,
                    "status": s.status,
                    "wkt": s.boundary.wkt,
                    "notes": f"Synthetic data (seed {data.seed}); not a real survey.",
                },
            ).scalar_one()
        )
    total = data.structure_count
    first_structure = _reserve_structure_ids(conn, total)

    def structure_lines() -> Iterator[str]:
        sid = first_structure
        for s, settlement_id in zip(data.settlements, settlement_ids, strict=True):
            if not len(s.footprints):
                continue
            wkb = shapely.to_wkb(shapely.set_srid(s.footprints, 4326), hex=True, include_srid=True)
            for i in range(len(s.footprints)):
                yield (
                    f"{sid}\t{settlement_id}\t{s.numbers[i]}\t{s.uses[i]}\t{s.walls[i]}\t"
                    f"{s.roofs[i]}\t{s.storeys[i]}\t{wkb[i]}\n"
                )
                sid += 1

    _copy(
        conn,
        "COPY structures (id, settlement_id, structure_number, use, wall_material, "
        "roof_material, storeys, geom) FROM STDIN",
        structure_lines(),
    )

    def household_lines() -> Iterator[str]:
        for i in range(len(data.household_structure)):
            rent = data.household_rent[i]
            rent_text = "\\N" if math.isnan(rent) else str(int(rent))
            yield (
                f"{first_structure + int(data.household_structure[i])}\t"
                f"{data.household_names[i]}\t{data.household_phones[i]}\t"
                f"{data.household_members[i]}\t{data.household_tenure[i]}\t{rent_text}\t"
                f"{data.household_years[i]}\n"
            )

    _copy(
        conn,
        "COPY households (structure_id, head_name, phone, members, tenure, rent_kes, "
        "years_in_settlement) FROM STDIN",
        household_lines(),
    )

    def facility_lines() -> Iterator[str]:
        for index, kind, condition, name, geom in data.facilities:
            wkb = shapely.to_wkb(shapely.set_srid(geom, 4326), hex=True, include_srid=True)
            yield (
                f"{kind}\t{condition or chr(92) + 'N'}\t{name}\t{settlement_ids[index]}\t{wkb}\n"
            )

    _copy(
        conn,
        "COPY facilities (type, condition, name, settlement_id, geom) FROM STDIN",
        facility_lines(),
    )
    walks = _load_walks(conn, data, settlement_ids)
    conn.execute(text("ANALYZE settlements, structures, households, facilities, traces"))
    return {
        "settlements": len(settlement_ids),
        "structures": total,
        "households": len(data.household_structure),
        "facilities": len(data.facilities),
        "traces": walks,
    }
