"""KoboToolbox XLSX exports, rewritten as the ODK CSV export they are equivalent to.

A Kobo XLSX export holds the submissions on its first sheet and one sheet per
repeat group; repeat rows point to their parent row by ``_parent_index`` (the
parent's ``_index``).  Groups are joined with ``/`` (``structure/use``), a
geopoint has helper columns ``_<path>_latitude``, ``_longitude``, ``_altitude``
and ``_precision``, and ``_validation_status`` says whether a submission was
approved.  :func:`kobo_to_csv` writes the same data as ODK's CSV files
(``-`` between groups, ``<field>-Latitude``..., ``KEY``/``PARENT_KEY``,
``ReviewState``), a sheet at a time and a batch of rows at a time, so one
reader (:mod:`geo.imports.enumeration`) serves both.  A submission's ``KEY`` is
its ``_uuid``; a repeat row's is ``<parent KEY>/<sheet>[n]``, n counting that
parent's rows from 1, as ODK numbers them.
"""

from __future__ import annotations

import csv
import re
import zipfile
from pathlib import Path
from typing import IO, Any

import pyogrio
import pyogrio.errors

from geo.core.uploads import BadArchive, TooLarge
from geo.imports.sources import Limits, UnreadableFile, check_stream, text_value

__all__ = ["is_xlsx", "kobo_to_csv"]

_OPTIONS = {"HEADERS": "FORCE", "FIELD_TYPES": "STRING"}
_GEOPOINT = re.compile(r"^_(.+)_(latitude|longitude|altitude|precision)$")
_PARTS = {
    "latitude": "Latitude",
    "longitude": "Longitude",
    "altitude": "Altitude",
    "precision": "Accuracy",
}
_NOT_APPROVED = "validation_status_not_approved"


def is_xlsx(file: IO[bytes]) -> bool:
    """Whether a zip upload is an Excel workbook (the position is kept)."""
    position = file.tell()
    try:
        with zipfile.ZipFile(file) as archive:
            return "xl/workbook.xml" in archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError):
        return False
    finally:
        file.seek(position)


def _odk_name(column: str) -> str:
    """A Kobo column named as ODK's CSV names it."""
    match = _GEOPOINT.match(column)
    if match is not None:
        return f"{match.group(1).replace('/', '-')}-{_PARTS[match.group(2)]}"
    return column.replace("/", "-")


def _check(path: Path, limits: Limits) -> None:
    """Refuse a workbook whose parts would unpack past the limits (a zip bomb)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except zipfile.BadZipFile as exc:
        raise BadArchive(f"not a readable workbook: {exc}") from exc
    if len(infos) > limits.max_archive_members * 10:
        raise BadArchive(f"the workbook holds {len(infos)} parts")
    if sum(info.file_size for info in infos) > limits.max_decompressed_bytes:
        raise TooLarge(limits.max_decompressed_bytes, "decompressed")
    with zipfile.ZipFile(path) as archive:
        for info in infos:
            if info.filename.endswith((".xml", ".rels")):
                with archive.open(info) as part:
                    check_stream(part, ".xml", limits, info.filename)


def _sheet(path: Path, sheet: str, batch_size: int) -> Any:
    """(columns, rows) of a sheet, ``batch_size`` rows at a time."""
    start = 0
    while True:
        try:
            meta, _, _, data = pyogrio.raw.read(
                str(path),
                layer=sheet,
                read_geometry=False,
                skip_features=start,
                max_features=batch_size,
                **_OPTIONS,
            )
        except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
            raise UnreadableFile(f"cannot read sheet {sheet!r} of the workbook: {exc}") from exc
        names = [str(n) for n in meta["fields"]]
        count = len(data[0]) if data else 0
        if count == 0:
            return
        yield (
            names,
            [
                {name: text_value(column[i]) for name, column in zip(names, data, strict=True)}
                for i in range(count)
            ],
        )
        start += count
        if count < batch_size:
            return


def kobo_to_csv(path: Path, folder: Path, limits: Limits) -> list[Path]:
    """Write a Kobo workbook's sheets as ODK CSV files in ``folder``; their paths."""
    _check(path, limits)
    # The open options reach only the first sheet GDAL reads; the config options reach all.
    pyogrio.set_gdal_config_options({f"OGR_XLSX_{k}": v for k, v in _OPTIONS.items()})
    try:
        sheets = [str(row[0]) for row in pyogrio.list_layers(str(path))]
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
        raise UnreadableFile(f"cannot read the workbook: {exc}") from exc
    if not sheets:
        raise UnreadableFile("the workbook has no sheet")
    main = re.sub(r"[^A-Za-z0-9_.-]", "_", sheets[0]) or "submissions"
    keys: dict[str, dict[str, str]] = {}
    written: list[Path] = []
    for number, sheet in enumerate(sheets):
        name = main if number == 0 else f"{main}-{re.sub(r'[^A-Za-z0-9_.-]', '_', sheet)}"
        target = folder / f"{name}.csv"
        keys[sheet] = _write_sheet(path, sheet, target, keys, main=sheets[0], limits=limits)
        written.append(target)
    return written


def _write_sheet(
    path: Path,
    sheet: str,
    target: Path,
    keys: dict[str, dict[str, str]],
    *,
    main: str,
    limits: Limits,
) -> dict[str, str]:
    """One sheet as CSV; the ``KEY`` of each row by its ``_index``."""
    own: dict[str, str] = {}
    counts: dict[str, int] = {}
    with target.open("w", encoding="utf-8", newline="") as handle:
        writer: Any = None
        for names, rows in _sheet(path, sheet, limits.batch_size):
            if writer is None:
                extra = ["KEY", "ReviewState"] if sheet == main else ["PARENT_KEY", "KEY"]
                writer = csv.writer(handle)
                writer.writerow([_odk_name(n) for n in names] + extra)
            for row in rows:
                if sheet == main:
                    key = row.get("_uuid") or f"row:{row.get('_index')}"
                    status = row.get("_validation_status") or ""
                    tail = [key, "rejected" if status == _NOT_APPROVED else ""]
                else:
                    parent_table = row.get("_parent_table_name") or main
                    parent = keys.get(parent_table, {}).get(row.get("_parent_index") or "", "")
                    counts[parent] = counts.get(parent, 0) + 1
                    key = f"{parent}/{sheet}[{counts[parent]}]"
                    tail = [parent, key]
                if row.get("_index"):
                    own[str(row["_index"])] = key
                writer.writerow([row[n] or "" for n in names] + tail)
        if writer is None:  # a sheet with no rows
            csv.writer(handle).writerow(
                ["KEY", "ReviewState"] if sheet == main else ["PARENT_KEY", "KEY"]
            )
    return own
