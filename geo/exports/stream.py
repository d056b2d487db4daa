"""Streaming exports of a collection: GeoJSON, CSV, GeoPackage, FlatGeobuf, Shapefile, KML.

GeoJSON and CSV bytes are built by PostGIS and streamed from a server-side
cursor.  The binary formats are written by GDAL (pyogrio) into a temporary
file, a batch of rows at a time, then streamed; memory stays bounded by the
batch size whatever the layer size.  Only registry properties are exported,
so personal household fields never leave through an export.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Connection, bindparam, func, select

from geo.core.auth import Principal
from geo.core.errors import BadRequest, NotFound
from geo.layers.items import ItemsRequest, base_statement
from geo.layers.registry import Collection

__all__ = ["FORMATS", "ExportFormat", "export_format", "stream_export"]

BATCH = 5_000


@dataclass(frozen=True)
class ExportFormat:
    """An export format: media type, file extension and GDAL driver (if any)."""

    name: str
    media_type: str
    extension: str
    driver: str | None = None


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("geojson", "application/geo+json", "geojson"),
        ExportFormat("csv", "text/csv; charset=utf-8", "csv"),
        ExportFormat("gpkg", "application/geopackage+sqlite3", "gpkg", "GPKG"),
        ExportFormat("fgb", "application/flatgeobuf", "fgb", "FlatGeobuf"),
        ExportFormat("shp", "application/zip", "zip", "ESRI Shapefile"),
        ExportFormat("kml", "application/vnd.google-earth.kml+xml", "kml", "KML"),
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


def _settlement_condition(collection: Collection, settlement_id: int) -> ColumnElement[bool]:
    table = collection.table
    column = table.c.settlement_id if "settlement_id" in table.c else table.c.id
    return column == bindparam(None, settlement_id, type_=BigInteger)


def _rows(
    conn: Connection,
    collection: Collection,
    user: Principal | None,
    settlement_id: int | None,
    columns: list[Any],
) -> Iterator[tuple[Any, ...]]:
    table = collection.table
    statement = select(*columns).where(collection.visible(user)).order_by(table.c.id)
    if settlement_id is not None:
        statement = statement.where(_settlement_condition(collection, settlement_id))
    result = conn.execute(statement.execution_options(stream_results=True, max_row_buffer=BATCH))
    try:
        while batch := result.fetchmany(BATCH):
            yield from (tuple(row) for row in batch)
    finally:
        result.close()


def _geojson(
    conn: Connection, collection: Collection, user: Principal | None, settlement_id: int | None
) -> Iterator[bytes]:
    request = ItemsRequest(collection=collection, user=user, limit=0)
    if settlement_id is not None:
        request.where.append(_settlement_condition(collection, settlement_id))
    statement = base_statement(request)
    statement = statement.order_by(statement.selected_columns[0])
    result = conn.execute(statement.execution_options(stream_results=True, max_row_buffer=BATCH))
    try:
        yield b'{"type":"FeatureCollection","features":['
        separator = b""
        while batch := result.fetchmany(BATCH):
            yield separator + ",".join(row[1] for row in batch).encode()
            separator = b","
        yield b"]}"
    finally:
        result.close()


def _csv(
    conn: Connection, collection: Collection, user: Principal | None, settlement_id: int | None
) -> Iterator[bytes]:
    table = collection.table
    names = [p.name for p in collection.properties]
    columns: list[Any] = [
        table.c.id,
        *(table.c[n] for n in names),
        func.ST_AsText(table.c.geom).label("wkt"),
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", *names, "WKT"])
    for n, row in enumerate(_rows(conn, collection, user, settlement_id, columns), start=1):
        writer.writerow(["" if v is None else v for v in row])
        if n % 1000 == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def _gdal(
    conn: Connection,
    collection: Collection,
    user: Principal | None,
    settlement_id: int | None,
    fmt: ExportFormat,
) -> Iterator[bytes]:
    import geopandas as gpd
    import pyogrio
    import shapely

    table = collection.table
    names = [p.name for p in collection.properties if p.kind != "datetime"]
    columns: list[Any] = [
        table.c.id,
        *(table.c[n] for n in names),
        func.ST_AsBinary(table.c.geom).label("wkb"),
    ]
    workdir = Path(tempfile.mkdtemp(prefix="makazi-export-"))
    target = workdir / f"{collection.name}.{fmt.extension if fmt.name != 'shp' else 'shp'}"
    try:
        batch: list[tuple[Any, ...]] = []
        written = False

        def flush() -> None:
            nonlocal written, batch
            frame = gpd.GeoDataFrame(
                [dict(zip(["id", *names], row[:-1], strict=True)) for row in batch],
                geometry=shapely.from_wkb([bytes(row[-1]) for row in batch]),
                crs="EPSG:4326",
            )
            for name in names:
                if frame[name].map(lambda v: isinstance(v, list)).any():
                    frame[name] = frame[name].map(lambda v: ";".join(v) if v else None)
            pyogrio.write_dataframe(
                frame,
                target,
                driver=fmt.driver,
                layer=collection.name,
                append=written,
                promote_to_multi=fmt.name == "shp",
            )
            written = True
            batch = []

        for row in _rows(conn, collection, user, settlement_id, columns):
            batch.append(row)
            if len(batch) >= BATCH:
                flush()
        if batch or not written:
            if batch:
                flush()
            else:
                yield from _empty(fmt, collection)
                return
        if fmt.name == "shp":
            archive = workdir / f"{collection.name}.zip"
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
                for part in sorted(workdir.glob(f"{collection.name}.*")):
                    if part.suffix != ".zip":
                        zf.write(part, part.name)
            target = archive
        with target.open("rb") as handle:
            while chunk := handle.read(1 << 16):
                yield chunk
    finally:
        for path in workdir.glob("*"):
            path.unlink(missing_ok=True)
        os.rmdir(workdir)


def _empty(fmt: ExportFormat, collection: Collection) -> Iterator[bytes]:
    if fmt.name == "kml":
        yield b'<?xml version="1.0" encoding="UTF-8"?><kml xmlns="http://www.opengis.net/kml/2.2">'
        yield f"<Document><name>{collection.name}</name></Document></kml>".encode()
    else:
        raise NotFound(f"nothing to export from {collection.name}")


def stream_export(
    conn: Connection,
    collection: Collection,
    fmt: ExportFormat,
    *,
    user: Principal | None,
    settlement_id: int | None = None,
) -> Iterator[bytes]:
    """The export's bytes, a chunk at a time (the caller owns ``conn``)."""
    if fmt.name == "geojson":
        return _geojson(conn, collection, user, settlement_id)
    if fmt.name == "csv":
        return _csv(conn, collection, user, settlement_id)
    return _gdal(conn, collection, user, settlement_id, fmt)
