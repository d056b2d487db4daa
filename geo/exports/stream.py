"""Export formats, and which of them PostgreSQL builds and which GDAL writes.

PostgreSQL builds GeoJSON, CSV, KML and FlatGeobuf (:mod:`geo.exports.postgis`);
they stream from a server-side cursor on the request's own connection.  GDAL
writes GeoPackage and zipped Shapefile (:mod:`geo.exports.gdal`), and
FlatGeobuf that ``ST_AsFlatGeobuf`` cannot write right (see
:func:`geo.exports.postgis.flatgeobuf_safe`);
the service runs those in a worker process (:mod:`geo.exports.worker`).  Only
registry properties are exported, so personal household fields never leave.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection

from geo.core.errors import BadRequest
from geo.exports import postgis
from geo.exports.query import ExportRows

__all__ = [
    "FORMATS",
    "ExportFormat",
    "export_format",
    "file_chunks",
    "needs_worker",
    "stream_export",
]

FILE_CHUNK = 1 << 16

Builder = Callable[[Connection, ExportRows], Generator[bytes, None, None]]


@dataclass(frozen=True)
class ExportFormat:
    """An export format: media type, file extension and who builds it.

    ``built_by_postgis`` is None for the formats only GDAL writes.
    """

    name: str
    media_type: str
    extension: str
    built_by_postgis: Builder | None = None


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("geojson", "application/geo+json", "geojson", postgis.geojson_chunks),
        ExportFormat("csv", "text/csv; charset=utf-8", "csv", postgis.csv_chunks),
        ExportFormat("gpkg", "application/geopackage+sqlite3", "gpkg"),
        ExportFormat("fgb", "application/flatgeobuf", "fgb", postgis.fgb_chunks),
        ExportFormat("shp", "application/zip", "zip"),
        ExportFormat("kml", "application/vnd.google-earth.kml+xml", "kml", postgis.kml_chunks),
    )
}


def export_format(name: str) -> ExportFormat:
    """The format called ``name``.

    Raises
    ------
    BadRequest
        For an unknown format, listing the known ones.
    """
    found = FORMATS.get(name.lower())
    if found is None:
        raise BadRequest(
            f"format {name!r} is not offered; one of {', '.join(FORMATS)}", field="format"
        )
    return found


def needs_worker(conn: Connection, rows: ExportRows, fmt: ExportFormat) -> bool:
    """Whether GDAL must write this export (GeoPackage, Shapefile, some FlatGeobuf)."""
    if fmt.built_by_postgis is None:
        return True
    if fmt.name == "fgb":
        return not postgis.flatgeobuf_safe(conn, rows)
    return False


def file_chunks(path: Path) -> Iterator[bytes]:
    """A file's bytes, a chunk at a time."""
    with path.open("rb") as handle:
        while chunk := handle.read(FILE_CHUNK):
            yield chunk


def stream_export(conn: Connection, rows: ExportRows, fmt: ExportFormat) -> Iterator[bytes]:
    """The export's bytes, a chunk at a time, all in this process (the CLI's way).

    The caller owns ``conn``.  GDAL formats are written to a temporary folder,
    streamed and removed.
    """
    if not needs_worker(conn, rows, fmt):
        assert fmt.built_by_postgis is not None
        yield from fmt.built_by_postgis(conn, rows)
        return
    from geo.exports.gdal import write_file

    workdir = Path(tempfile.mkdtemp(prefix="makazi-export-"))
    try:
        yield from file_chunks(write_file(conn, rows, fmt.name, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
