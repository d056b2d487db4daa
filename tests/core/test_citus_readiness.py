"""The Citus plan checked against the live schema: every constraint that blocks distribution.

docs/scaling.md says how Makazi's tables would be spread over a Citus cluster
(which column each distributed table is split by, which tables stay reference
tables) and lists, in its "Blockers" block, what in today's schema stands in
the way. This test reads the migrated schema from PostgreSQL's catalogue,
finds every blocker by the rules Citus applies, prints them, and fails when the
list in the document is not the list the schema gives, so the gap stays
visible as the schema grows.
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import Connection, text

DOC = Path(__file__).resolve().parents[2] / "docs" / "scaling.md"

# table -> (colocation group, distribution column)
DISTRIBUTED = {
    "settlements": ("settlement", "id"),
    "structures": ("settlement", "settlement_id"),
    "facilities": ("settlement", "settlement_id"),
    "households": ("settlement", "settlement_id"),
    "settlement_profiles": ("settlement", "settlement_id"),
    "traces": ("trace", "id"),
    "trace_points": ("trace", "trace_id"),
    "trace_segments": ("trace", "trace_id"),
    "trace_files": ("trace", "trace_id"),
    "feature_history": ("history", "feature_id"),
}


def blockers(conn: Connection) -> list[str]:
    """What stops ``DISTRIBUTED`` from being distributed, one line each, sorted."""
    found: list[str] = []
    columns = {
        (r.table, r.column): r.nullable
        for r in conn.execute(
            text(
                "SELECT table_name AS table, column_name AS column, "
                "is_nullable = 'YES' AS nullable "
                "FROM information_schema.columns WHERE table_schema = 'public'"
            )
        )
    }
    tables = {t for t, _ in columns}
    for table, (_group, key) in DISTRIBUTED.items():
        if table not in tables:
            continue
        if (table, key) not in columns:
            found.append(f"{table}: no {key} column to distribute by")
        elif columns[(table, key)]:
            found.append(f"{table}.{key} may be null (a distribution column may not)")
    rows = conn.execute(
        text(
            """
            SELECT c.conname, c.contype, t.relname AS table,
                   array(SELECT a.attname FROM unnest(c.conkey) k
                         JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k)
                       AS cols,
                   f.relname AS ref_table,
                   array(SELECT a.attname FROM unnest(c.confkey) k
                         JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k)
                       AS ref_cols
            FROM pg_constraint c
            JOIN pg_class t ON t.oid = c.conrelid
            JOIN pg_namespace n ON n.oid = t.relnamespace AND n.nspname = 'public'
            LEFT JOIN pg_class f ON f.oid = c.confrelid
            WHERE c.contype IN ('p', 'u', 'f', 'x')
            UNION ALL
            SELECT i.relname, 'i', t.relname,
                   array(SELECT a.attname FROM unnest(x.indkey) k
                         JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k),
                   NULL, NULL
            FROM pg_index x
            JOIN pg_class i ON i.oid = x.indexrelid
            JOIN pg_class t ON t.oid = x.indrelid
            JOIN pg_namespace n ON n.oid = t.relnamespace AND n.nspname = 'public'
            WHERE x.indisunique AND NOT EXISTS (
                SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
            """
        )
    ).all()
    for row in rows:
        if row.table not in DISTRIBUTED:
            if row.contype == "f" and row.ref_table in DISTRIBUTED:
                found.append(
                    f"{row.conname}: reference table {row.table} points at distributed "
                    f"{row.ref_table}"
                )
            continue
        group, key = DISTRIBUTED[row.table]
        if row.contype in ("p", "u", "i", "x") and key not in row.cols:
            kind = {"p": "primary key", "u": "unique", "i": "unique index", "x": "exclusion"}
            found.append(
                f"{row.conname}: {kind[row.contype]} ({', '.join(row.cols)}) of {row.table} "
                f"lacks {key}"
            )
        if row.contype == "f" and row.ref_table in DISTRIBUTED:
            ref_group, ref_key = DISTRIBUTED[row.ref_table]
            pairs = dict(zip(row.cols, row.ref_cols, strict=True))
            if ref_group != group or pairs.get(key) != ref_key:
                found.append(
                    f"{row.conname}: foreign key {row.table} ({', '.join(row.cols)}) -> "
                    f"{row.ref_table} ({', '.join(row.ref_cols)}) is not on {key} = {ref_key}"
                )
    return sorted(set(found))


def documented() -> list[str]:
    block = re.search(r"<!-- blockers -->\s*```text\n(.*?)```", DOC.read_text(), re.S)
    assert block, "docs/scaling.md has no blockers block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_the_documented_blockers_are_the_schemas(connection: Connection) -> None:
    live = blockers(connection)
    print("\n".join(["Citus blockers in the live schema:", *live]))
    assert live, "the rules found nothing: check them against the schema"
    assert documented() == live, "update docs/scaling.md's blockers block to:\n" + "\n".join(live)
