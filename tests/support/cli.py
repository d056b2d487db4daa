"""The ``makazi`` command run as a user runs it: a subprocess, its exit code and output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["makazi"]


def makazi(
    *args: str, data_dir: Path | None = None, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``makazi ARGS`` (``python -m app.cli``) with ``MAKAZI_*`` settings from ``env``.

    ``MAKAZI_DATABASE_URL`` is passed on only when ``env`` names it, so a
    command without it uses the embedded cluster of ``data_dir``.
    """
    environment = {**os.environ, **env}
    if "MAKAZI_DATABASE_URL" not in env:
        environment.pop("MAKAZI_DATABASE_URL", None)
    if data_dir is not None:
        environment["MAKAZI_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
    )
