"""``makazi export`` writes every format, whole or one settlement; a bad format writes nothing."""

from __future__ import annotations

from pathlib import Path

import pyogrio
import pytest
from sqlalchemy import create_engine, text

from tests.exports.conftest import STRUCTURES
from tests.support.cli import makazi

SOURCES = {
    "geojson": "{path}",
    "csv": "{path}",
    "kml": "{path}",
    "fgb": "{path}",
    "gpkg": "{path}",
    "shp": "/vsizip/{path}/structures.shp",
}


@pytest.mark.parametrize("fmt", list(SOURCES))
def test_cli_export_each_format(
    export_database: tuple[str, str, str], tmp_path: Path, fmt: str
) -> None:
    url, _token, _tile = export_database
    out = tmp_path / f"structures.{'zip' if fmt == 'shp' else fmt}"
    result = makazi(
        "export", "structures", "--format", fmt, "-o", str(out), MAKAZI_DATABASE_URL=url
    )
    assert result.returncode == 0, result.stderr
    assert f"bytes to {out}" in result.stdout
    frame = pyogrio.read_dataframe(SOURCES[fmt].format(path=out))
    assert len(frame) == STRUCTURES
    assert len({int(i) for i in frame["id"]}) == STRUCTURES
    assert not list(tmp_path.glob(".*.part"))


def test_cli_export_one_settlement(export_database: tuple[str, str, str], tmp_path: Path) -> None:
    url, _token, _tile = export_database
    engine = create_engine(url)
    with engine.connect() as conn:
        settlement = conn.execute(text("SELECT max(id) FROM settlements")).scalar_one()
        expected = set(
            conn.execute(
                text("SELECT id FROM structures WHERE settlement_id = :s"), {"s": settlement}
            ).scalars()
        )
    engine.dispose()
    out = tmp_path / "part.gpkg"
    result = makazi(
        "export",
        "structures",
        "--format",
        "gpkg",
        "--settlement",
        str(settlement),
        "-o",
        str(out),
        MAKAZI_DATABASE_URL=url,
    )
    assert result.returncode == 0, result.stderr
    assert set(pyogrio.read_dataframe(out)["id"]) == expected


def test_cli_bad_format_writes_nothing(
    export_database: tuple[str, str, str], tmp_path: Path
) -> None:
    url, _token, _tile = export_database
    result = makazi(
        "export",
        "structures",
        "--format",
        "dwg",
        "-o",
        str(tmp_path / "x"),
        MAKAZI_DATABASE_URL=url,
    )
    assert result.returncode == 1 and "dwg" in result.stderr
    assert not list(tmp_path.iterdir())


def test_cli_unknown_settlement_writes_nothing(
    export_database: tuple[str, str, str], tmp_path: Path
) -> None:
    url, _token, _tile = export_database
    out = tmp_path / "x.csv"
    args = ("export", "structures", "--format", "csv", "-o", str(out), "--settlement", "987654")
    result = makazi(*args, MAKAZI_DATABASE_URL=url)
    assert result.returncode == 1
    assert result.stderr.strip() == "makazi: --settlement: no settlement 987654"
    assert not list(tmp_path.iterdir())
