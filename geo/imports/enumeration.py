"""Enumeration form exports (ODK Central / ODK Briefcase CSV zips) as an import source.

The export is a zip of CSV files: ``<form>.csv`` with one row per submission
(``KEY`` is the instanceID, groups are flattened with ``-`` as in
``structure-number``, a geopoint is four columns ``<field>-Latitude``,
``-Longitude``, ``-Altitude``, ``-Accuracy``, a geoshape one column
``lat lon alt acc;lat lon alt acc;...``, latitude first) and one
``<form>-<repeat>.csv`` per repeat group, joined by ``PARENT_KEY``.

:class:`EnumerationSource` reads the main CSV with the same interface as
:class:`~geo.imports.sources.Source` (batches of features with their index and
source id), so staging, checks and merge are shared.  A row's geometry is the
mapping's ``geometry`` column (a geoshape, or a geopoint's prefix); without it,
its first readable geoshape, else its first geopoint.  Rows whose
``ReviewState`` is ``rejected`` are skipped and counted.
"""

from __future__ import annotations

import csv
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from geo.core.errors import BadRequest
from geo.imports.sources import Batch, Layer, UnreadableFile, reproject, text_value

__all__ = ["EnumerationSource", "open_enumeration", "parse_geoshape"]

FORMAT = "ODK CSV export"
_LATITUDE = "-Latitude"
_LONGITUDE = "-Longitude"
_NUMBER = r"-?\d+(?:\.\d+)?"
_VERTEX = re.compile(rf"^\s*({_NUMBER})\s+({_NUMBER})(?:\s+\S+){{0,2}}\s*$")
csv.field_size_limit(16 * 1024 * 1024)


def parse_geoshape(value: str) -> shapely.Geometry | None:
    """A geoshape (``lat lon alt acc;...``, latitude first) as a Polygon, or a LineString
    for a geotrace that does not close; None when it is not one.

    >>> parse_geoshape("-1.3 36.8 0 5;-1.3 36.9 0 5;-1.2 36.9 0 5;-1.3 36.8 0 5").geom_type
    'Polygon'
    """
    parts = [part for part in value.split(";") if part.strip()]
    if len(parts) < 2:
        return None
    points: list[tuple[float, float]] = []
    for part in parts:
        match = _VERTEX.match(part)
        if match is None:
            return None
        points.append((float(match.group(2)), float(match.group(1))))
    if len(points) >= 3 and (points[0] == points[-1] or len(points) >= 4):
        ring = points if points[0] == points[-1] else [*points, points[0]]
        if len(ring) >= 4:
            return shapely.Polygon(ring)
    return shapely.LineString(points)


def is_enumeration(paths: list[Path]) -> bool:
    """Whether the unpacked files are a form's CSV export (a main CSV with ``KEY``)."""
    csvs = [p for p in paths if p.suffix.lower() == ".csv"]
    if not csvs or len(csvs) != len([p for p in paths if p.suffix.lower() != ".txt"]):
        return False
    main = min(csvs, key=lambda p: len(p.stem))
    return "KEY" in _header(main)


def _records(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of one CSV of the export; a broken CSV is a 400 naming file and line."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            yield from reader
        except (csv.Error, UnicodeDecodeError) as exc:
            raise UnreadableFile(
                f"{path.name}: line {reader.line_num}: {exc}", line=reader.line_num
            ) from exc


def _header(path: Path) -> list[str]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        try:
            return next(csv.reader(handle))
        except (StopIteration, csv.Error, UnicodeDecodeError):
            return []


@dataclass
class EnumerationSource:
    """A form export unpacked in a private folder (removed by :meth:`close`)."""

    folder: Path
    main: Path
    repeats: dict[str, Path]
    header: list[str]
    layers: list[Layer]
    geometry: str | None = None
    format: str = FORMAT
    warnings: list[str] = field(default_factory=list)
    skipped: int = 0
    skipped_keys: set[str] = field(default_factory=set)

    @property
    def total(self) -> int:
        """Submissions in the main CSV."""
        return self.layers[0].features

    @property
    def columns(self) -> list[str]:
        """The main CSV's columns."""
        return list(self.header)

    def close(self) -> None:
        """Remove the unpacked files."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def _geometry(self, row: dict[str, str]) -> shapely.Geometry | None:
        if self.geometry is not None:
            if self.geometry in row:
                return parse_geoshape(row[self.geometry] or "")
            return _geopoint(row, self.geometry)
        for value in row.values():
            if value and ";" in value and (shape := parse_geoshape(value)) is not None:
                return shape
        for name in self.header:
            if name.endswith(_LATITUDE):
                point = _geopoint(row, name[: -len(_LATITUDE)])
                if point is not None:
                    return point
        return None

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """The submissions that are not rejected, ``batch_size`` at a time."""
        layer = self.layers[0].name
        pending: list[tuple[int, dict[str, Any], shapely.Geometry | None]] = []
        for index, row in enumerate(_records(self.main)):
            if (row.get("ReviewState") or "").strip().lower() == "rejected":
                self.skipped += 1
                self.skipped_keys.add(text_value(row.get("KEY")) or "")
                continue
            pending.append((index, row, self._geometry(row)))
            if len(pending) >= batch_size:
                yield _batch(layer, pending)
                pending = []
        if pending:
            yield _batch(layer, pending)

    def repeat_columns(self, repeat: str) -> list[str]:
        """The columns of a repeat group's CSV (400 naming the groups when there is none)."""
        return _header(self._repeat(repeat))

    def _repeat(self, repeat: str) -> Path:
        path = self.repeats.get(repeat)
        if path is None:
            groups = ", ".join(self.repeats) or "none"
            raise BadRequest(
                f"the export has no repeat group {repeat!r}; its repeat groups: {groups}",
                field="mapping",
            )
        return path

    def repeat_batches(self, repeat: str, batch_size: int) -> Iterator[Batch]:
        """The rows of a repeat group whose submission was not skipped, without geometry.

        Each row's ``PARENT_KEY`` names its submission; its ``KEY`` is its source id.
        """
        pending: list[tuple[int, dict[str, Any]]] = []
        for index, row in enumerate(_records(self._repeat(repeat))):
            if (text_value(row.get("PARENT_KEY")) or "") in self.skipped_keys:
                continue
            pending.append((index, {k: v or None for k, v in row.items() if k is not None}))
            if len(pending) >= batch_size:
                yield _rows_batch(repeat, pending)
                pending = []
        if pending:
            yield _rows_batch(repeat, pending)


def _rows_batch(layer: str, pending: list[tuple[int, dict[str, Any]]]) -> Batch:
    return Batch(
        layer=layer,
        indexes=[index for index, _ in pending],
        source_ids=[text_value(row.get("KEY")) for _, row in pending],
        wkb=[None] * len(pending),
        problems=[None] * len(pending),
        rows=[row for _, row in pending],
    )


def _geopoint(row: dict[str, str], prefix: str) -> shapely.Geometry | None:
    lat = (row.get(prefix + _LATITUDE) or "").strip()
    lon = (row.get(prefix + _LONGITUDE) or "").strip()
    if not lat or not lon:
        return None
    try:
        return shapely.Point(float(lon), float(lat))
    except ValueError:
        return None


def _batch(layer: str, pending: list[tuple[int, dict[str, Any], shapely.Geometry | None]]) -> Batch:
    geoms = np.array([g for _, _, g in pending], dtype=object)
    raw = shapely.to_wkb(geoms)
    wkb, problems = reproject(raw, None, len(pending))
    return Batch(
        layer=layer,
        indexes=[index for index, _, _ in pending],
        source_ids=[text_value(row.get("KEY")) for _, row, _ in pending],
        wkb=wkb,
        problems=problems,
        rows=[
            {k: (v if v != "" else None) for k, v in row.items() if k is not None}
            for _, row, _ in pending
        ],
    )


def open_enumeration(folder: Path, paths: list[Path], *, geometry: str | None) -> EnumerationSource:
    """The form export among ``paths`` (all CSV), ready to read."""
    csvs = sorted((p for p in paths if p.suffix.lower() == ".csv"), key=lambda p: len(p.stem))
    main = csvs[0]
    repeats = {
        p.stem[len(main.stem) + 1 :]: p for p in csvs[1:] if p.stem.startswith(main.stem + "-")
    }
    header = _header(main)
    if geometry is not None and geometry not in header and geometry + _LATITUDE not in header:
        raise BadRequest(
            f"mapping.geometry {geometry!r} is neither a column nor a geopoint of {main.name}",
            field="mapping",
        )
    count = sum(1 for _ in _records(main))
    return EnumerationSource(
        folder=folder,
        main=main,
        repeats=repeats,
        header=header,
        layers=[
            Layer(
                name=main.stem, features=max(count, 0), geometry_type=None, columns=header, crs=None
            )
        ],
        geometry=geometry,
    )
