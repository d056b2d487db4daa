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
With ``MAKAZI_BENCH_IMPORT_STEPS_SCRATCH=1`` it then measures, on a copy of the
imported table, what each constraint, trigger and index of ``structures`` costs
by inserting the same rows again with it removed.
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
        print(markdown_table(["insert of the same rows again", "seconds", "saved"], costs(url)))
    return 0


#: What to remove, one at a time, before inserting the rows again (SQL run first).
REMOVALS: tuple[tuple[str, str], ...] = (
    ("nothing (the merge's insert with its history rows)", ""),
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


def costs(url: str) -> list[list[object]]:
    """Insert the imported rows again (new ids), each time with one cost removed, rolled back."""
    from geo.imports.history import audit_paused, insert_audited

    engine = create_engine(url)
    columns = "settlement_id, structure_number, use, wall_material, storeys, geom"
    insert = (
        f"INSERT INTO structures ({columns}, source_id, created_by, updated_by) "
        "SELECT settlement_id, structure_number || 'x', use, wall_material, storeys, geom, "
        "source_id || 'x', 'bench', 'bench' FROM scratch ORDER BY id"
    )
    rows: list[list[object]] = []
    base = float("nan")
    for label, sql in REMOVALS:
        with engine.connect() as conn, conn.begin() as transaction:
            act_as(conn, "bench")
            conn.execute(text("CREATE TEMP TABLE scratch AS SELECT * FROM structures"))
            conn.execute(text("ANALYZE scratch"))
            for part in sql.split(";") if sql not in ("", "HISTORY") else ():
                conn.execute(text(part))
            started = time.perf_counter()
            if sql == "HISTORY":
                with audit_paused(conn):
                    conn.execute(text(insert))
            else:
                insert_audited(conn, "structures", insert)
            seconds = time.perf_counter() - started
            transaction.rollback()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM structures, feature_history"))  # the rolled-back rows
        base = seconds if not sql else base
        rows.append([label, seconds, base - seconds])
    engine.dispose()
    return rows


if __name__ == "__main__":
    sys.exit(main())
