"""What the ``makazi`` command prints is its own: no library log lines or warnings.

Run as a user runs it (a subprocess with the default log level), against the
live server's database: exports through GDAL, and trace uploads over HTTP.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import makazi
from tests.support.live import LiveServer
from tests.traces.test_traces import walk


@pytest.mark.parametrize("fmt", ["shp", "gpkg", "kml", "fgb"])
def test_export_prints_no_library_chatter(
    live_server: LiveServer, tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / f"structures.{fmt}"
    result = makazi(
        "export",
        "structures",
        "--format",
        fmt,
        "-o",
        str(out),
        MAKAZI_DATABASE_URL=live_server.database_url,
    )
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 0
    printed = result.stdout + result.stderr
    assert "Created" not in printed and "Warning" not in printed, printed


def test_trace_upload_prints_no_request_log_lines(live_server: LiveServer, tmp_path: Path) -> None:
    files = []
    for i in range(3):
        path = tmp_path / f"walk{i}.gpx"
        path.write_bytes(walk(5, start=10 * i + 7))
        files.append(str(path))
    args = (
        "trace",
        "upload",
        *files,
        "--url",
        live_server.base_url,
        "--token",
        live_server.tokens["mapper"],
    )
    result = makazi(*args)
    assert result.returncode == 0, result.stderr
    assert "HTTP Request" not in result.stdout + result.stderr
    assert "3 stored" in result.stdout + result.stderr
    again = makazi(*args)
    assert "HTTP Request" not in again.stdout + again.stderr
    assert "3 already there" in again.stdout + again.stderr


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["import", "x.geojson", "--collection", "nope"], "makazi import: argument --collection"),
        (["token", "revoke"], "makazi token revoke: the following arguments are required: NAME"),
        (["nosuchcommand"], "makazi: argument command: invalid choice: 'nosuchcommand'"),
    ],
)
def test_a_usage_error_is_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    from app.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(needle), err


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "structures", "--format", "geojson", "-o"],
        ["atlas", "1", "-o"],
        ["db", "dump", "-o"],
    ],
)
def test_writing_into_a_missing_folder_names_the_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str]
) -> None:
    from app.cli import main

    target = tmp_path / "no-such-folder" / "out"
    assert main([*argv, str(target)]) == 1
    err = capsys.readouterr().err
    assert err == f"makazi: cannot write {target}: there is no folder {target.parent}\n"
