"""Bulk import: ``makazi import`` vs ``ogr2ogr -f PostgreSQL`` (COPY mode), same GeoPackage.

A generated GeoPackage of ``MAKAZI_BENCH_IMPORT_FEATURES`` (default 1,000,000)
structure footprints in Nairobi, each with a number, use, storeys and wall
material, is loaded into a fresh database of the bench cluster holding a grid of
100 settlements (so every footprint is placed in one):

* ``makazi import`` (a process of its own): read in batches, mapped, COPY into a
  stage, checked and merged in SQL, with versions, history rows, settlement
  placement and the source-id index, all in one transaction;
* the same file again (every feature found unchanged);
* ``ogr2ogr -f PostgreSQL --config PG_USE_COPY YES`` into a plain table: the
  floor for moving the bytes, with no checks, history or indexes but its own;
* with ``MAKAZI_BENCH_IMPORT_BASELINE`` naming another tree of the code (say
  ``git archive main app geo`` unpacked), that tree's ``makazi import`` first, into
  a database of its own: before and after, side by side in one run.

Peak RSS is each process's ``VmHWM``, polled while it runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from bench.common import BenchContext, markdown_table, peak_rss_mb
from geo.core.db import migrate

DATABASE = "makazi_bench_imports"
#: The demo structures of the shared bench database are not needed here.
OWN_DATABASE = True


def make_gpkg(out: Path, features: int) -> Path:
    """The footprints as a GeoPackage (generated once per size)."""
    import geopandas as gpd
    import numpy as np
    import shapely

    target = out / "imports" / f"structures-{features}.gpkg"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    x = 36.70 + rng.random(features) * 0.2
    y = -1.40 + rng.random(features) * 0.2
    uses = np.array(["residential", "business", "mixed", "school"])
    frame = gpd.GeoDataFrame(
        {
            "structure_number": [f"B-{i:07d}" for i in range(features)],
            "use": uses[np.arange(features) % len(uses)],
            "storeys": 1 + np.arange(features) % 3,
            "wall_material": "mabati",
        },
        geometry=shapely.box(x, y, x + 0.00005, y + 0.00005),
        crs=4326,
    )
    frame.to_file(target, driver="GPKG", layer="structures")
    return target


def settlements_grid(conninfo: str) -> None:
    """A 10 x 10 grid of settlements over the footprints, so every feature is placed."""
    with psycopg.connect(conninfo) as conn:
        conn.execute(
            "INSERT INTO settlements (name, geom) "
            "SELECT format('Grid %s-%s', i, j), ST_Multi(ST_MakeEnvelope("
            "36.70 + i * 0.02, -1.40 + j * 0.02, 36.72 + i * 0.02, -1.38 + j * 0.02, 4326)) "
            "FROM generate_series(0, 9) i, generate_series(0, 9) j"
        )


def load_line(start: float) -> str:
    """The machine's load average over a run, which other work shares."""
    return (
        f"load average {start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end on "
        f"{os.cpu_count()} cores (a shared machine: compare the ratios measured side by side)"
    )


def run_timed(
    argv: list[str], env: dict[str, str], cwd: Path | None = None
) -> tuple[float, float, str]:
    """(seconds, peak RSS MiB, last output line) of a command run to its end (in ``cwd``)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd
    )
    peak = 0.0
    while proc.poll() is None:
        try:
            peak = max(peak, peak_rss_mb(proc.pid))
        except OSError:
            break
        time.sleep(0.05)
    output = proc.communicate()[0].decode(errors="replace").strip()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {output[-500:]}")
    return seconds, peak, output.splitlines()[-1] if output else ""


#: What a QGIS user runs after loading a layer with ogr2ogr: one INSERT ... SELECT into the
#: layer, the database's own triggers placing each structure and writing its history row.
QGIS_MERGE = """
    INSERT INTO structures (structure_number, use, wall_material, storeys, geom, source_id)
    SELECT structure_number || '-peer', use, wall_material, storeys, geom,
           'peer:' || fid
    FROM ogr_structures ORDER BY fid
"""


def qgis_merge(conninfo: str) -> float:
    """Seconds of :data:`QGIS_MERGE`, rolled back (the layer stays as it was)."""
    with psycopg.connect(conninfo) as conn:
        conn.execute("SELECT set_config('makazi.user', 'bench', true)")
        started = time.perf_counter()
        conn.execute(QGIS_MERGE)
        seconds = time.perf_counter() - started
        conn.rollback()
    return seconds


def _wanted(part: str) -> bool:
    """Whether ``MAKAZI_BENCH_IMPORT_<part>`` (default on) asks for that part of the run."""
    return os.environ.get(f"MAKAZI_BENCH_IMPORT_{part}", "1") != "0"


def run(ctx: BenchContext) -> str:
    """Time both loaders; the RESULTS.md section."""
    features = int(os.environ.get("MAKAZI_BENCH_IMPORT_FEATURES", "1000000"))
    start_load = os.getloadavg()[0]
    gpkg = make_gpkg(ctx.out, features)
    url = ctx.cluster.create_database(DATABASE, drop=True)
    migrate(url)
    settlements_grid(ctx.cluster.conninfo(DATABASE))
    env = {"MAKAZI_DATABASE_URL": url}
    command = [sys.executable, "-m", "app.cli", "import", str(gpkg), "--collection", "structures"]
    rows: list[list[object]] = []
    baseline = None
    if os.environ.get("MAKAZI_BENCH_IMPORT_BASELINE"):
        # another tree of the code (``git archive <commit> app geo``) into its own database
        base_url = ctx.cluster.create_database(f"{DATABASE}_baseline", drop=True)
        tree = Path(os.environ["MAKAZI_BENCH_IMPORT_BASELINE"])
        migrating = f"from geo.core.db import migrate; migrate({base_url!r})"
        run_timed([sys.executable, "-c", migrating], {}, cwd=tree)  # that tree's migrations
        settlements_grid(ctx.cluster.conninfo(f"{DATABASE}_baseline"))
        baseline = run_timed([*command, "--quiet"], {"MAKAZI_DATABASE_URL": base_url}, cwd=tree)
    first = run_timed([*command, "--quiet"], env)
    # MAKAZI_BENCH_IMPORT_AGAIN=0 / _PEER=0 leave out the second pass / the second peer
    again = run_timed([*command, "--quiet"], env) if _wanted("AGAIN") else None
    ogr = None
    if shutil.which("ogr2ogr"):
        ogr = run_timed(
            [
                "ogr2ogr",
                "-f",
                "PostgreSQL",
                f"PG:{ctx.cluster.conninfo(DATABASE)}",
                str(gpkg),
                "-nln",
                "ogr_structures",
                "-overwrite",
                "--config",
                "PG_USE_COPY",
                "YES",
            ],
            {},
        )
    merged = None
    if ogr is not None and _wanted("PEER"):  # the ogr2ogr load, then the merge into the layer
        merged = (ogr[0] + qgis_merge(ctx.cluster.conninfo(DATABASE)), ogr[1], "")
    floor = ogr[0] if ogr else float("nan")
    peer = merged[0] if merged else float("nan")
    tree_name = os.environ.get("MAKAZI_BENCH_IMPORT_BASELINE_NAME", "baseline")
    for label, (seconds, peak, _line) in (
        *(((f"makazi import, {tree_name} (new features)", baseline),) if baseline else ()),
        ("makazi import (new features)", first),
        *((("makazi import again (all unchanged)", again),) if again else ()),
        *((("ogr2ogr -f PostgreSQL (COPY)", ogr),) if ogr else ()),
        *(
            (("ogr2ogr + the SQL merge a QGIS user would run (second peer)", merged),)
            if ogr and merged is not None
            else ()
        ),
    ):
        rows.append([label, seconds, seconds / floor, seconds / peer, peak, features / seconds])
    table = markdown_table(
        ["loader", "seconds", "x ogr2ogr", "x ogr2ogr + merge", "peak RSS MiB", "features/s"],
        rows,
    )
    return (
        f"{features:,} footprints from one GeoPackage ({gpkg.stat().st_size / 1e6:.0f} MB) into "
        f"a database holding 100 settlements; {load_line(start_load)}.\n\n{table}\n\n"
        f"- makazi: {first[2]}\n"
        + (f"- again: {again[2]}\n" if again else "")
        + "- makazi's run includes what ogr2ogr does not do: checks (geometry type and validity, "
        "every field), placement in a settlement, versions, one history row per feature, five "
        "more indexes, the foreign key and check constraints.\n"
        "- ogr2ogr + merge: ogr2ogr's load, then one `INSERT ... SELECT` from its table into "
        "`structures` (the layer's triggers place each footprint and write its history row), "
        "rolled back; its RSS is ogr2ogr's.\n"
    )
