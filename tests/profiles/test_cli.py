"""``makazi atlas ID -o FILE``: the same PDF from the command line; one line when it fails."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from app.cli import main
from tests.profiles.conftest import insert_settlement, insert_structure


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path) -> Path:
    monkeypatch.setenv("MAKAZI_DATABASE_URL", database_url)
    monkeypatch.setenv("MAKAZI_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


@pytest.fixture
def committed(engine: Engine) -> Iterator[int]:
    """A settlement of 6 structures the command can see (committed), removed afterwards."""
    with engine.begin() as conn:
        sid = insert_settlement(conn, "Printable", 3000, 0, 80, 40)
        ids = [
            insert_structure(conn, f"PR-07-{k + 1:02d}", "residential", 3010 + 10 * k, 10)
            for k in range(6)
        ]
    yield sid
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM structures WHERE id = ANY(:ids)"), {"ids": ids})
        conn.execute(text("DELETE FROM settlements WHERE id = :id"), {"id": sid})


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="pdftotext missing: poppler-utils")
def test_atlas_command_writes_the_pdf(
    env: Path, committed: int, capsys: pytest.CaptureFixture[str]
) -> None:
    out = env / "printable.pdf"
    code = main(["atlas", str(committed), "-o", str(out), "--paper", "A3", "--role", "viewer"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "wrote 3 pages" in captured.out
    pages = subprocess.run(
        ["pdftotext", "-layout", str(out), "-"], check=True, capture_output=True, text=True
    ).stdout.split("\f")
    assert "prepared for role viewer" in pages[0]
    assert all(f"PR-07-{k:02d}" in pages[2] for k in range(1, 7))
    # for a viewer, 6 structures show but 0 households is a small count
    households = next(line for line in pages[0].splitlines() if line.startswith("households"))
    assert "suppressed" in households


def test_unknown_settlement_is_one_line(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["atlas", "987654", "-o", str(env / "x.pdf")])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err == "makazi: id: no settlement 987654"
    assert not (env / "x.pdf").exists()
