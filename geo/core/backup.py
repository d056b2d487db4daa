"""Backups: the database to one pg_dump custom-format file and back.

The file holds everything Makazi keeps (features, history, original GPX files,
token hashes, jobs), so a restore brings back exactly what was dumped. The
tools are PostgreSQL's own ``pg_dump`` and ``pg_restore`` of the newest
installed PostgreSQL (a dump needs a ``pg_dump`` at least as new as the
server), run with the password in the environment, never on the command line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from sqlalchemy.engine import make_url

from geo.core.cluster import find_postgres
from geo.core.errors import MakaziError

__all__ = ["BackupError", "dump", "restore"]


class BackupError(MakaziError):
    """pg_dump or pg_restore failed (its own message says why)."""

    status = 503


def _tool(name: str) -> str:
    install = find_postgres()
    if install is not None and (install.bin_dir / name).exists():
        return str(install.bin_dir / name)
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} is not installed (Debian: apt-get install postgresql-client)")
    return found


def _connection(url: str) -> tuple[list[str], dict[str, str]]:
    """libpq arguments and environment for ``url`` (the password stays off argv)."""
    parsed = make_url(url)
    args = ["--host", parsed.host or "127.0.0.1", "--port", str(parsed.port or 5432)]
    if parsed.username:
        args += ["--username", parsed.username]
    env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    return args, env


def _run(argv: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        said = [line for line in result.stderr.splitlines() if line.strip()]
        raise BackupError(f"{Path(argv[0]).name} failed: {said[-1] if said else 'no message'}")


def dump(url: str, path: Path) -> int:
    """Write the database at ``url`` to ``path`` (custom format); returns its size in bytes.

    The file is written beside ``path`` and renamed into place, so a failed dump
    never leaves a truncated file under the name of a good one.
    """
    args, env = _connection(url)
    partial = path.with_name(path.name + ".partial")
    try:
        _run(
            [
                _tool("pg_dump"),
                *args,
                "--format=custom",
                "--no-owner",
                "--no-privileges",
                "--file",
                str(partial),
                "--dbname",
                str(make_url(url).database),
            ],
            env,
        )
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path.stat().st_size


def restore(url: str, path: Path) -> None:
    """Replace the contents of the database at ``url`` with the dump in ``path``.

    One transaction: a dump that does not restore cleanly leaves the database
    as it was.
    """
    if not path.is_file():
        raise BackupError(f"no dump file {path}")
    args, env = _connection(url)
    _run(
        [
            _tool("pg_restore"),
            *args,
            "--clean",
            "--if-exists",
            "--no-owner",
            "--no-privileges",
            "--single-transaction",
            "--exit-on-error",
            "--dbname",
            str(make_url(url).database),
            str(path),
        ],
        env,
    )
