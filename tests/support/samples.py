"""Where ../shared/samples is: beside the clone, or ``MAKAZI_SAMPLES``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SAMPLES"]

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples"
if not SAMPLES.exists():  # a clone beside ../shared, wherever the clone lives
    SAMPLES = Path(os.environ.get("MAKAZI_SAMPLES", "../shared/samples")).resolve()
