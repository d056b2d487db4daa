"""ODK Central CSV exports written as ODK writes them (the import tests and bench/odk.py).

A form export is a zip of the main CSV (one row per submission; a geopoint as
four ``-Latitude``/``-Longitude``/``-Altitude``/``-Accuracy`` columns, a
geoshape as ``lat lon alt acc;...``) and one CSV per repeat group whose rows
point to their submission by ``PARENT_KEY``.  The writer streams both into the
zip, so a 100,000-submission export takes no more memory than a small one.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "FORM",
    "HEADER",
    "HOUSEHOLD_HEADER",
    "households_of",
    "shape",
    "submission",
    "write_export",
]

FORM = "structure_survey"
HEADER = [
    "SubmissionDate",
    "structure-structure_number",
    "structure-use",
    "structure-wall_material",
    "location-Latitude",
    "location-Longitude",
    "location-Altitude",
    "location-Accuracy",
    "footprint",
    "meta-instanceID",
    "KEY",
    "ReviewState",
]
HOUSEHOLD_HEADER = ["head_name", "members", "tenure", "PARENT_KEY", "KEY"]


def shape(x: float, y: float, size: float = 0.00005) -> str:
    """A geoshape as ODK writes it: ``lat lon alt acc`` per vertex, latitude first, closed."""
    ring = [(x, y), (x + size, y), (x + size, y + size), (x, y + size), (x, y)]
    return ";".join(f"{lat} {lon} 1650.0 4.0" for lon, lat in ring)


def submission(
    key: str,
    number: str,
    use: str,
    *,
    point: tuple[float, float] | None,
    footprint: str = "",
    review: str = "approved",
) -> dict[str, Any]:
    """One row of the main CSV; ``point`` is (lon, lat) or None for an empty geopoint."""
    lon, lat = point if point else ("", "")
    return {
        "SubmissionDate": "2026-11-30T09:00:00.000Z",
        "structure-structure_number": number,
        "structure-use": use,
        "structure-wall_material": "mabati",
        "location-Latitude": lat,
        "location-Longitude": lon,
        "location-Altitude": "1650" if lat != "" else "",
        "location-Accuracy": "4.5" if lat != "" else "",
        "footprint": footprint,
        "meta-instanceID": key,
        "KEY": key,
        "ReviewState": review,
    }


def households_of(key: str, count: int = 1) -> Iterator[list[str]]:
    """``count`` repeat rows of the submission ``key``."""
    tenures = ("tenant", "owner", "other")
    for i in range(1, count + 1):
        yield ["Amina", str(3 + i % 4), tenures[(i - 1) % 3], key, f"{key}/households[{i}]"]


def write_export(
    target: Path,
    submissions: Iterable[dict[str, Any]],
    households: Iterable[list[str]],
    form: str = FORM,
) -> Path:
    """Write the zip: ``{form}.csv`` and ``{form}-households.csv``, streamed."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open(f"{form}.csv", "w") as raw, _text(raw) as main:
            writer = csv.DictWriter(main, fieldnames=HEADER)
            writer.writeheader()
            writer.writerows(submissions)
        with archive.open(f"{form}-households.csv", "w") as raw, _text(raw) as repeat:
            rows = csv.writer(repeat)
            rows.writerow(HOUSEHOLD_HEADER)
            rows.writerows(households)
    return target


def _text(raw: Any) -> io.TextIOWrapper:
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")
