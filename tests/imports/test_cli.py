"""``makazi import``: dry run (mapping, counts, nothing written), a real run, a refused file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from geo.core.cluster import EmbeddedCluster
from geo.core.db import migrate
from tests.imports.helpers import count_rows, footprints, make_settlement
from tests.support.cli import makazi


@pytest.fixture
def database(cluster: EmbeddedCluster) -> Iterator[str]:
    """A database of its own (the CLI commits) with one settlement."""
    url = cluster.create_database("makazi_import_cli", drop=True)
    migrate(url)
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        make_settlement(conn)
    engine.dispose()
    yield url


def _count(url: str, table: str) -> int:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        value = count_rows(conn, table)
    engine.dispose()
    return value


def test_dry_run_then_import(database: str, tmp_path: Path) -> None:
    path = tmp_path / "footprints.gpkg"
    footprints(7).to_file(path, driver="GPKG")
    mapping = tmp_path / "mapping.json"
    mapping.write_text(
        json.dumps({"fields": {"wall_material": "wall"}, "values": {"use": {"*": "residential"}}})
    )
    env = {"MAKAZI_DATABASE_URL": database}
    dry = makazi(
        "import",
        str(path),
        "--collection",
        "structures",
        "--mapping",
        str(mapping),
        "--dry-run",
        **env,
    )
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout[: dry.stdout.rindex("}") + 1])
    assert report["mapping"]["fields"]["wall_material"] == "wall"
    assert report["counts"]["use"] == {"residential": 7}
    assert "would import 7" in dry.stdout
    assert _count(database, "structures") == 0

    run = makazi(
        "import",
        str(path),
        "--collection",
        "structures",
        "--mapping",
        str(mapping),
        "--as",
        "achieng",
        **env,
    )
    assert run.returncode == 0, run.stderr
    assert "imported 7" in run.stdout
    assert "7/7" in run.stderr and "features" in run.stderr  # the progress bar, on stderr
    assert _count(database, "structures") == 7
    again = makazi(
        "import", str(path), "--collection", "structures", "--mapping", str(mapping), **env
    )
    assert "imported 0" in again.stdout and "unchanged 7" in again.stdout
    engine = create_engine(database.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        owner = conn.execute(text("SELECT owner FROM imports ORDER BY id LIMIT 1")).scalar_one()
    engine.dispose()
    assert owner == "achieng"


def test_refused_file_names_the_features(database: str, tmp_path: Path) -> None:
    frame = footprints(3)
    frame.loc[2, "use"] = "castle"
    path = tmp_path / "bad.geojson"
    frame.to_file(path, driver="GeoJSON")
    run = makazi("import", str(path), "--collection", "structures", MAKAZI_DATABASE_URL=database)
    assert run.returncode == 1
    assert "feature 2" in run.stderr and "castle" in run.stderr
    assert "nothing was written" in run.stderr
    assert _count(database, "structures") == 0
    partial = makazi(
        "import", str(path), "--collection", "structures", "--partial", MAKAZI_DATABASE_URL=database
    )
    assert partial.returncode == 0 and "imported 2" in partial.stdout
