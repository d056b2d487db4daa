"""``makazi analyse …`` prints tables, writes GeoJSON, and fails with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine

from app.cli import main
from app.cli.analyse import _print_breakdown, _print_counts
from tests.analysis.test_inputs import settlements_locked


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path) -> Path:
    monkeypatch.setenv("MAKAZI_DATABASE_URL", database_url)
    monkeypatch.setenv("MAKAZI_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def test_impact_prints_a_table_and_writes_geojson(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = env / "road.geojson"
    line.write_text(
        json.dumps({"type": "LineString", "coordinates": [[36.78, -1.31], [36.79, -1.31]]})
    )
    out = env / "affected.geojson"
    code = main(
        ["analyse", "impact", "--geometry", str(line), "--buffer-m", "30", "--geojson", str(out)]
    )
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0, captured.err
    assert "buffer_area_m2" in printed and "structures" in printed
    area = float(
        next(x for x in printed.splitlines() if x.startswith("buffer_area_m2"))
        .split()[1]
        .replace(",", "")
    )
    assert 60_000 < area < 70_000  # ~1.1 km x 60 m with round ends
    assert json.loads(out.read_text())["type"] == "FeatureCollection"


def test_bad_input_is_one_line_on_stderr(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["analyse", "access", "--facility-type", "well", "--max-distance-m", "100"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("makazi: facility_type") and "\n" not in err
    code = main(
        ["analyse", "impact", "--geometry", str(env / "missing.geojson"), "--buffer-m", "1"]
    )
    assert code == 1
    assert "--geometry" in capsys.readouterr().err
    code = main(["analyse", "summary", "--settlement", "987654"])
    assert code == 1
    assert "no settlement 987654" in capsys.readouterr().err


def test_timeout_is_one_clear_line(
    env: Path,
    monkeypatch: pytest.MonkeyPatch,
    engine: Engine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Another session holds settlements locked: the analysis gives up at the timeout."""
    monkeypatch.setenv("MAKAZI_ANALYSIS_TIMEOUT_MS", "200")
    with settlements_locked(engine):
        code = main(["analyse", "overlaps"])
    assert code == 1
    assert "MAKAZI_ANALYSIS_TIMEOUT_MS" in capsys.readouterr().err


def test_hidden_counts_print_as_suppressed_never_as_a_bound(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from geo.core.privacy import Suppressor

    hide = Suppressor(active=True)
    # business (7) is hidden only so that toilet (2) cannot be worked out from the total
    result = {
        "structures_by_use": hide.breakdown(
            {"residential": 40, "business": 7, "toilet": 2}, "structures_by_use"
        )
    }
    result["share_beyond"] = None  # undefined (nothing to divide by), not hidden
    result["suppressed"] = hide.suppressed
    _print_counts(result, ["share_beyond"])
    _print_breakdown("use", result, "structures_by_use")
    printed = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1] for line in printed.splitlines() if line.strip()}
    assert rows["business"] == "suppressed" and rows["toilet"] == "suppressed"
    assert rows["residential"] == "40"
    assert rows["share_beyond"] == "-"
    assert "<" not in printed
