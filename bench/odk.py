"""A form export through ``makazi import``: structures and their households.

An ODK Central CSV zip of ``MAKAZI_BENCH_ODK_SUBMISSIONS`` (default 100,000)
submissions, each a structure with a geopoint (every fourth also with a
geoshape footprint), and 1 to 4 households each in the repeat group (2.5 on
average: 250,000 for 100,000 submissions), written by the test suite's ODK
writer (:mod:`tests.support.odk`).  It is imported into a fresh database holding
the settlements grid of :mod:`bench.imports`, once (all new) and again (all
unchanged), with time and the process's peak RSS.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import BenchContext, markdown_table
from bench.imports import load_line, run_timed, settlements_grid
from geo.core.db import migrate
from tests.support.odk import households_of, shape, submission, write_export

DATABASE = "makazi_bench_odk"
#: The demo structures of the shared bench database are not needed here.
OWN_DATABASE = True
USES = ("residential", "business", "mixed", "school")


def _key(i: int) -> str:
    return f"uuid:{i:08d}-0000-4000-8000-000000000000"


def _points(count: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    return 36.70 + rng.random(count) * 0.2, -1.40 + rng.random(count) * 0.2


def make_export(out: Path, count: int) -> tuple[Path, int]:
    """The zip (generated once per size) and how many households it holds."""
    target = out / "odk" / f"structure_survey-{count}.zip"
    households = sum(1 + i % 4 for i in range(count))
    if target.exists():
        return target, households
    target.parent.mkdir(parents=True, exist_ok=True)
    x, y = _points(count)

    def submissions() -> Iterator[dict[str, Any]]:
        for i in range(count):
            lon, lat = float(x[i]), float(y[i])
            yield submission(
                _key(i),
                f"O-{i:07d}",
                USES[i % len(USES)],
                point=(lon, lat),
                footprint=shape(lon, lat) if i % 4 == 0 else "",
            )

    rows = (row for i in range(count) for row in households_of(_key(i), 1 + i % 4))
    write_export(target, submissions(), rows)
    return target, households


def run(ctx: BenchContext) -> str:
    """Import the export twice; the RESULTS.md section."""
    count = int(os.environ.get("MAKAZI_BENCH_ODK_SUBMISSIONS", "100000"))
    start_load = os.getloadavg()[0]
    path, households = make_export(ctx.out, count)
    url = ctx.cluster.create_database(DATABASE, drop=True)
    migrate(url)
    settlements_grid(ctx.cluster.conninfo(DATABASE))
    mapping = ctx.out / "odk" / "mapping.json"
    mapping.write_text(json.dumps({"households": {"repeat": "households"}}))
    command = [
        *(sys.executable, "-m", "app.cli", "import", str(path)),
        *("--collection", "structures", "--mapping", str(mapping), "--as", "bench", "--quiet"),
    ]
    env = {"MAKAZI_DATABASE_URL": url}
    first = run_timed(command, env)
    again = run_timed(command, env)
    rows: list[list[object]] = [
        [label, seconds, peak, (count + households) / seconds]
        for label, (seconds, peak, _line) in (
            ("makazi import (all new)", first),
            ("makazi import again (all unchanged)", again),
        )
    ]
    table = markdown_table(["run", "seconds", "peak RSS MiB", "rows/s"], rows)
    return (
        f"{count:,} ODK Central submissions with {households:,} households in the repeat "
        f"group ({path.stat().st_size / 1e6:.0f} MB zip) into a database with 100 settlements; "
        "structures and households with versions, history, placement and the households "
        f"count of each structure, in one transaction; {load_line(start_load)}.\n\n{table}\n\n"
        f"- first: {first[2]}\n- again: {again[2]}\n"
    )
