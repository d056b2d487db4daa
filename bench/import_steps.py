"""Where an import's time goes: ``run_import`` in-process, each step and statement timed.

``python -m bench.import_steps`` imports the bench's generated GeoPackage
(``MAKAZI_BENCH_IMPORT_FEATURES``, default 100,000 here) into a fresh database of
the bench cluster holding the 100-settlement grid, timing the stage's steps
(read + map + COPY, checks, report, merge) and every SQL statement that takes
more than 0.2 s, then ``ogr2ogr`` into the same database for the ratio.  It
prints a Markdown table to paste into RESULTS.md ("imports"); it is not a topic
of ``python -m bench`` (it writes no section itself).

With ``MAKAZI_BENCH_IMPORT_STEPS_EXPLAIN=1`` the plans of the slow statements
(``auto_explain`` with buffers, WAL and trigger times) go to the cluster's log.
With ``MAKAZI_BENCH_IMPORT_STEPS_SCRATCH=1`` it then measures what each constraint,
trigger and index of ``structures`` costs, in seconds and WAL bytes, by inserting
the imported rows again (rolled back) with it removed, and from a floor (only the
primary key) with it alone added; also rows in spatial order, ``wal_compression``
and the foreign key as one check per statement.  ``..._ROUNDS`` repeats the list
alternating, ``..._ONLY`` (words of the labels, comma-separated) shortens it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event, text

from bench.common import OUT, bench_context, markdown_table, own_peak_rss_mb
from bench.imports import load_line, make_gpkg, settlements_grid
from geo.core.db import act_as, migrate
from geo.imports import staging
from geo.imports.pipeline import ImportOptions, run_import
from geo.imports.sources import Limits

DATABASE = "makazi_bench_import_steps"
AUTO_EXPLAIN = {
    "log_min_duration": "1000",
    "log_analyze": "on",
    "log_buffers": "on",
    "log_wal": "on",
    "log_triggers": "on",
    "log_nested_statements": "on",
}


@contextmanager
def timed_steps(spent: dict[str, float]) -> Iterator[None]:
    """Add each wrapped :class:`~geo.imports.staging.Stage` method's seconds to ``spent``."""
    originals: dict[str, Callable[..., Any]] = {}
    for name in ("create", "load", "validate", "report", "merge"):
        original = getattr(staging.Stage, name)
        originals[name] = original

        def wrapper(self: Any, *args: Any, _f: Any = original, _n: str = name, **kw: Any) -> Any:
            started = time.perf_counter()
            try:
                return _f(self, *args, **kw)
            finally:
                spent[_n] += time.perf_counter() - started

        setattr(staging.Stage, name, wrapper)
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(staging.Stage, name, original)


def main() -> int:
    """Run the import once with its steps timed; print the tables."""
    features = int(os.environ.get("MAKAZI_BENCH_IMPORT_FEATURES", "100000"))
    ctx = bench_context(structures=0, database="makazi_bench_empty")
    start_load = os.getloadavg()[0]
    gpkg = make_gpkg(OUT, features)
    url = ctx.cluster.create_database(DATABASE, drop=True)
    migrate(url)
    settlements_grid(ctx.cluster.conninfo(DATABASE))
    engine = create_engine(url)
    statements: dict[str, float] = defaultdict(float)
    clock: dict[int, float] = {}

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        clock[id(cursor)] = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seconds = time.perf_counter() - clock.pop(id(cursor), time.perf_counter())
        if seconds > 0.2:
            statements[" ".join(statement.split())[:90]] += seconds

    spent: dict[str, float] = defaultdict(float)
    limits = Limits(
        max_decompressed_bytes=1 << 34, max_archive_members=1000, max_line_bytes=1 << 20
    )
    started = time.perf_counter()
    with timed_steps(spent), engine.begin() as conn, gpkg.open("rb") as handle:
        act_as(conn, "bench")
        if os.environ.get("MAKAZI_BENCH_IMPORT_STEPS_EXPLAIN"):
            # the plans of statements over 1 s, with buffers, WAL and each trigger's time,
            # go to the cluster's log (bench/out/data/log)
            conn.execute(text("LOAD 'auto_explain'"))
            for name, value in AUTO_EXPLAIN.items():
                conn.execute(text(f"SET LOCAL auto_explain.{name} = {value}"))
        report = run_import(
            conn,
            handle,
            filename=gpkg.name,
            options=ImportOptions(collection="structures"),
            limits=limits,
            import_id=None,
        )
        spent["commit"] -= time.perf_counter()
    spent["commit"] += time.perf_counter()
    total = time.perf_counter() - started
    engine.dispose()
    ogr = float("nan")
    if shutil.which("ogr2ogr"):
        ogr_started = time.perf_counter()
        subprocess.run(
            [
                "ogr2ogr", "-f", "PostgreSQL", f"PG:{ctx.cluster.conninfo(DATABASE)}", str(gpkg),
                "-nln", "ogr_structures", "-overwrite", "--config", "PG_USE_COPY", "YES",
            ],
            check=True,
        )  # fmt: skip
        ogr = time.perf_counter() - ogr_started
    rows: list[list[object]] = [
        [f"`Stage.{name}`" if name != "commit" else "commit", seconds, seconds / total]
        for name, seconds in spent.items()
    ]
    rows.append(["total (run_import + commit)", total, 1.0])
    rows.append(["ogr2ogr -f PostgreSQL (COPY), same database", ogr, ogr / total])
    print(
        f"{features:,} footprints, {report.summary()}; {load_line(start_load)}; "
        f"peak RSS {own_peak_rss_mb():.0f} MiB; {total / ogr:.2f}x ogr2ogr\n"
    )
    print(markdown_table(["step", "seconds", "share"], rows))
    print()
    print(
        markdown_table(
            ["statement (> 0.2 s)", "seconds"],
            [[f"`{s}`", v] for s, v in sorted(statements.items(), key=lambda kv: -kv[1])],
        )
    )
    if os.environ.get("MAKAZI_BENCH_IMPORT_STEPS_SCRATCH"):
        print()
        header = ["insert of the same rows again", "seconds", "saved s", "WAL MB", "saved MB"]
        header.append("of it FPI MB")
        print(markdown_table(header, costs(url)))
        print()
        kinds = sorted(WAL_KINDS[""].items(), key=lambda kv: -kv[1][0])
        rows = [[kind, wal, fpi] for kind, (wal, fpi) in kinds]
        print(markdown_table(["WAL of the reference insert, by kind", "MB", "of it FPI MB"], rows))
    return 0


#: What to remove or change, one at a time, before inserting the rows again: SQL run first,
#: or ``HISTORY`` (no history rows), ``KEYCHECK`` (the foreign key replaced by
#: :data:`KEY_CHECK`), ``ORDER <expression>`` (rows inserted in that order) or
#: ``SET <setting>`` (a setting for the insert alone).
REMOVALS: tuple[tuple[str, str], ...] = (
    ("nothing (the merge's insert with its history rows)", ""),
    ("rows in spatial order (`ORDER BY geom`: PostGIS's Hilbert sort)", "ORDER geom"),
    ("rows in geohash order (`ORDER BY ST_GeoHash(geom, 12)`)", "ORDER ST_GeoHash(geom, 12)"),
    ("wal_compression = lz4", "SET wal_compression = lz4"),
    ("wal_compression = zstd", "SET wal_compression = zstd"),
    ("the history rows (insert alone, audit paused)", "HISTORY"),
    ("the stamp and locate row triggers", "ALTER TABLE structures DISABLE TRIGGER structures_stamp;"
     "ALTER TABLE structures DISABLE TRIGGER structures_locate"),
    ("the audit statement trigger (its transition table)",
     "ALTER TABLE structures DISABLE TRIGGER structures_audit_insert"),
    ("the foreign key to settlements",
     "ALTER TABLE structures DROP CONSTRAINT structures_settlement_id_fkey"),
    ("the ST_IsValid check", "ALTER TABLE structures DROP CONSTRAINT structures_geom_valid"),
    ("the other check constraints", "ALTER TABLE structures DROP CONSTRAINT structures_geom_type, "
     "DROP CONSTRAINT structures_storeys_check, DROP CONSTRAINT structures_use_check, "
     "DROP CONSTRAINT structures_structure_number_check"),
    ("index structures_geom_idx (GiST)", "DROP INDEX structures_geom_idx"),
    ("index structures_number_per_settlement", "DROP INDEX structures_number_per_settlement"),
    ("index structures_review_state_idx", "DROP INDEX structures_review_state_idx"),
    ("index structures_settlement_idx", "DROP INDEX structures_settlement_idx"),
    ("index structures_source_id_idx", "DROP INDEX structures_source_id_idx"),
    ("index structures_use_idx", "DROP INDEX structures_use_idx"),
    ("the three indexes of feature_history", "DROP INDEX feature_history_changed_idx;"
     "DROP INDEX feature_history_feature_idx;"
     "ALTER TABLE feature_history DROP CONSTRAINT feature_history_pkey"),
)  # fmt: skip


#: WAL MB (all records, full-page images) by resource manager of the last insert of each kind.
WAL_KINDS: dict[str, dict[str, tuple[float, float]]] = {}


#: The pieces the floor removes (a plain table with its primary key, as ogr2ogr writes,
#: minus ogr2ogr's GiST index); ``the floor + X`` keeps X alone.
FLOOR: tuple[tuple[str, str], ...] = (
    ("the history rows (with feature_history's 3 indexes)", "HISTORY"),
    ("the stamp, locate and audit triggers", "ALTER TABLE structures DISABLE TRIGGER USER"),
    ("the foreign key", "ALTER TABLE structures DROP CONSTRAINT structures_settlement_id_fkey"),
    ("the ST_IsValid check", "ALTER TABLE structures DROP CONSTRAINT structures_geom_valid"),
    ("the other checks", "ALTER TABLE structures DROP CONSTRAINT structures_geom_type, "
     "DROP CONSTRAINT structures_storeys_check, DROP CONSTRAINT structures_use_check, "
     "DROP CONSTRAINT structures_structure_number_check"),
    *(
        (f"index {name}", f"DROP INDEX {name}")
        for name in ("structures_geom_idx", "structures_number_per_settlement",
                     "structures_review_state_idx", "structures_settlement_idx",
                     "structures_source_id_idx", "structures_use_idx")
    ),
)  # fmt: skip
#: The settlement key checked once per statement instead of once per row (a schema change
#: proposed, not made): one lock per distinct settlement, one anti-join over the new rows.
KEY_CHECK = """
ALTER TABLE structures DROP CONSTRAINT structures_settlement_id_fkey;
CREATE FUNCTION pg_temp.settlement_key_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE missing bigint;
BEGIN
    PERFORM 1 FROM settlements s
    WHERE s.id IN (SELECT DISTINCT settlement_id FROM new_rows) FOR KEY SHARE;
    SELECT n.settlement_id INTO missing FROM new_rows n
    WHERE n.settlement_id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM settlements s WHERE s.id = n.settlement_id) LIMIT 1;
    IF FOUND THEN
        RAISE foreign_key_violation USING MESSAGE = format(
            'settlement_id %s names no existing settlement', missing);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER settlement_key_check AFTER INSERT ON structures REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.settlement_key_check();
"""
REMOVALS += (
    ("the foreign key as one check per statement (proposed)", "KEYCHECK"),
    ("the floor: all of the above removed, the primary key kept", ";".join(s for _l, s in FLOOR)),
    *(
        (f"the floor + {label}", ";".join(s for other, s in FLOOR if other != label))
        for label, _sql in FLOOR
    ),
    (
        "the floor + the foreign key as one check per statement (proposed)",
        ";".join(s for _l, s in FLOOR) + ";KEYCHECK",
    ),
)


def costs(url: str) -> list[list[object]]:
    """Insert the imported rows again (new ids), each time with one cost removed, rolled back.

    Every insert starts from the table rebuilt (``VACUUM FULL``: the rolled-back
    rows' index pages gone) and right after a ``CHECKPOINT``, so each pays the
    full-page images of the pages it first touches; its WAL, and the full-page
    images in it, are read with ``pg_walinspect``.  ``MAKAZI_BENCH_IMPORT_STEPS_ROUNDS``
    (default 1) runs the list that many times, alternating; ``..._ONLY`` (a
    comma-separated list of label words) keeps the rows naming one of them
    (and the first, the reference).
    """
    from geo.imports.history import audit_paused, insert_audited

    engine = create_engine(url)
    columns = "settlement_id, structure_number, use, wall_material, storeys, geom"
    insert = (
        f"INSERT INTO structures ({columns}, source_id, created_by, updated_by) "
        "SELECT settlement_id, structure_number || 'x', use, wall_material, storeys, geom, "
        "source_id || 'x', 'bench', 'bench' FROM scratch ORDER BY {order}"
    )
    only = [w for w in os.environ.get("MAKAZI_BENCH_IMPORT_STEPS_ONLY", "").split(",") if w]
    chosen = [
        (label, sql)
        for i, (label, sql) in enumerate(REMOVALS)
        if i == 0 or not only or any(word in label for word in only)
    ]
    rounds = int(os.environ.get("MAKAZI_BENCH_IMPORT_STEPS_ROUNDS", "1"))
    measured: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for _round in range(rounds):
        for label, sql in chosen:
            measured[label].append(_insert_once(engine, insert, sql, audit_paused, insert_audited))
            print(label, measured[label][-1], file=sys.stderr, flush=True)
    engine.dispose()
    rows: list[list[object]] = []
    base = measured[chosen[0][0]]
    for label, _sql in chosen:
        runs = measured[label]
        rows.append(
            [
                label,
                ", ".join(f"{s:.1f}" for s, _w, _f in runs),
                sum(b[0] - r[0] for b, r in zip(base, runs, strict=True)) / len(runs),
                ", ".join(f"{w:.0f}" for _s, w, _f in runs),
                sum(b[1] - r[1] for b, r in zip(base, runs, strict=True)) / len(runs),
                ", ".join(f"{f:.0f}" for _s, _w, f in runs),
            ]
        )
    return rows


def _insert_once(
    engine: Any, insert: str, sql: str, audit_paused: Any, insert_audited: Any
) -> tuple[float, float, float]:
    """(seconds, WAL MB, full-page image MB) of one insert with ``sql``'s change, rolled back."""
    parts = [part for part in sql.split(";") if part]
    order = next((p.removeprefix("ORDER ") for p in parts if p.startswith("ORDER ")), "id")
    statement = insert.replace("{order}", order)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("CHECKPOINT"))
    with engine.connect() as conn, conn.begin() as transaction:
        act_as(conn, "bench")
        conn.execute(text("CREATE TEMP TABLE scratch AS SELECT * FROM structures"))
        conn.execute(text("ANALYZE scratch"))
        for part in parts:
            if part.startswith("SET "):
                conn.execute(text(f"SET LOCAL {part.removeprefix('SET ')}"))
            elif part == "KEYCHECK":
                conn.execute(
                    text(
                        "ALTER TABLE structures DROP CONSTRAINT IF EXISTS "
                        "structures_settlement_id_fkey"
                    )
                )
                conn.connection.driver_connection.execute(KEY_CHECK.split(";", 1)[1])
            elif part not in ("HISTORY",) and not part.startswith("ORDER "):
                conn.execute(text(part))
        lsn = conn.execute(text("SELECT pg_current_wal_lsn()")).scalar()
        started = time.perf_counter()
        if "HISTORY" in parts:
            with audit_paused(conn):
                conn.execute(text(statement))
        else:
            insert_audited(conn, "structures", statement)
        seconds = time.perf_counter() - started
        end = conn.execute(text("SELECT pg_current_wal_lsn()")).scalar()
        transaction.rollback()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_walinspect"))
        conn.execute(text("SELECT pg_switch_wal()"))  # flushes the rolled-back insert's WAL
        kinds = conn.execute(
            text(
                'SELECT "resource_manager/record_type", combined_size, fpi_size '
                "FROM pg_get_wal_stats(:lsn, :end) WHERE count > 0"
            ),
            {"lsn": lsn, "end": end},
        ).all()
        # the rolled-back rows, and the index pages they grew: each insert starts alike
        conn.execute(text("VACUUM FULL structures, feature_history"))
    WAL_KINDS[sql] = {str(k): (int(c) / 1e6, int(f) / 1e6) for k, c, f in kinds}
    moved = sum(int(c) for _k, c, _f in kinds)
    fpi = sum(int(f) for _k, _c, f in kinds)
    return seconds, moved / 1e6, fpi / 1e6


if __name__ == "__main__":
    sys.exit(main())
