"""Exports only GDAL writes: GeoPackage, zipped Shapefile (and FlatGeobuf of mixed geometry).

:func:`write_file` reads the rows a batch at a time from a server-side cursor
and hands GDAL (pyogrio) the geometries as PostGIS's WKB, so nothing is parsed
in Python.  GDAL holds the interpreter while it writes: the service runs this
in a worker process (:mod:`geo.exports.worker`), the CLI in its own process.

Each file takes the batches as one Arrow stream (``pyogrio.write_arrow``): GDAL
opens it once and keeps it (and a GeoPackage's R-tree) open for the whole
export, as ``ogr2ogr`` does.  Written a batch at a time instead, each write
reopened the file: 1,000,000 footprints took 92 s in writes of 5,000 rows and
43 s in writes of 20,000.

- GeoPackage 1.2 (``VERSION=1.2``): QGIS 3.22 and GDAL 3.6 (Debian 12) read
  it fully; 1.4 makes them warn that it "may only be partially supported".
- Shapefile: one ``.shp`` per geometry family (``<layer>.shp`` when there is one
  family, else ``<layer>_points``/``_lines``/``_polygons``, each read in a pass
  of its own), geometries as
  Multi*, field names from :mod:`geo.exports.shapefile`, ``.cpg`` (UTF-8) and
  ``.prj`` beside it, all in one zip.  dBASE holds at most 254 bytes of text
  per field: longer notes are cut by the format.
- FlatGeobuf: only when PostGIS cannot write it right (mixed geometry types).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Select, func, or_, select

from geo.exports.query import ExportRows, batches, property_values
from geo.exports.shapefile import short_name
from geo.layers.registry import Collection

__all__ = ["FAMILIES", "write_file"]

# ST_Dimension -> (file suffix, Shapefile geometry type)
FAMILIES: dict[int, tuple[str, str]] = {
    0: ("points", "MultiPoint"),
    1: ("lines", "MultiLineString"),
    2: ("polygons", "MultiPolygon"),
}
_CANONICAL_DIMENSION = {"POINT": 0, "MULTIPOINT": 0, "LINESTRING": 1, "MULTILINESTRING": 1}


def _arrow_type(kind: str) -> Any:
    """The Arrow type of a property kind (``id`` included); text for any other kind."""
    import pyarrow as pa

    types = {"id": pa.int64(), "integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_()}
    return types.get(kind, pa.string())


def _arrow_column(kind: str, values: list[Any]) -> Any:
    """One Arrow array of a property's (or ``id``'s) values, nulls kept."""
    import pyarrow as pa

    if kind == "number":
        values = [None if v is None else float(v) for v in values]
    try:
        return pa.array(values, type=_arrow_type(kind))
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        # text kinds only: a value that is not a str (an enum member, say) as its text
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def _arrow_stream(
    collection: Collection, names: list[str], row_batches: Iterator[Sequence[Any]]
) -> Any:
    """The rows as a ``pyarrow.RecordBatchReader``: ``names`` and the geometry's WKB, ``wkb``."""
    import pyarrow as pa

    kinds = ["id", *(p.kind for p in collection.properties)]
    schema = pa.schema(
        [
            *(pa.field(n, _arrow_type(k)) for n, k in zip(names, kinds, strict=True)),
            ("wkb", pa.binary()),
        ]
    )

    def record_batches() -> Iterator[Any]:
        for rows in row_batches:
            if not rows:
                continue
            columns = [
                _arrow_column(kind, [row[index] for row in rows])
                for index, kind in enumerate(kinds)
            ]
            geometry = pa.array([row[len(kinds)] for row in rows], type=pa.binary())
            yield pa.record_batch([*columns, geometry], schema=schema)

    return pa.RecordBatchReader.from_batches(schema, record_batches())


def _write_stream(
    collection: Collection,
    names: list[str],
    row_batches: Iterator[Sequence[Any]],
    target: Path,
    driver: str,
    *,
    geometry_type: str = "Unknown",
    options: dict[str, str] | None = None,
    layer_options: dict[str, str] | None = None,
) -> Path:
    """Write every batch to ``target`` through one GDAL write (the file opened once)."""
    import pyogrio

    pyogrio.write_arrow(
        _arrow_stream(collection, names, row_batches),
        target,
        layer=target.stem,
        driver=driver,
        geometry_name="wkb",
        geometry_type=geometry_type,
        crs="EPSG:4326",
        encoding="UTF-8" if driver == "ESRI Shapefile" else None,
        dataset_options=options,
        layer_options=layer_options,
    )
    return target


def _checked(
    row_batches: Iterator[Sequence[Any]], on_batch: Callable[[], None]
) -> Iterator[Sequence[Any]]:
    for rows in row_batches:
        on_batch()
        yield rows


def write_file(
    conn: Connection,
    rows: ExportRows,
    fmt: str,
    workdir: Path,
    *,
    on_batch: Callable[[], None] | None = None,
) -> Path:
    """Write the export as ``fmt`` (``gpkg``, ``shp`` or ``fgb``) into ``workdir``.

    ``on_batch`` is called before each batch (a worker checks that its parent is
    still there).  Returns the file to send (a zip for Shapefile).
    """
    collection = rows.collection
    table = collection.table
    names = ["id", *(p.name for p in collection.properties)]
    geometry = func.ST_Multi(table.c.geom) if fmt == "shp" else table.c.geom
    statement = rows.select([*property_values(collection), func.ST_AsBinary(geometry)])

    def read(statement: Select[Any]) -> Iterator[Sequence[Any]]:
        row_batches = batches(conn, statement, rows.batch)
        return row_batches if on_batch is None else _checked(row_batches, on_batch)

    if fmt == "shp":
        return _shapefile(conn, rows, statement, read, workdir)
    if fmt == "gpkg":
        target = workdir / f"{collection.name}.gpkg"
        return _write_stream(
            collection, names, read(statement), target, "GPKG", options={"VERSION": "1.2"}
        )
    # FlatGeobuf's spatial index cannot hold a feature without geometry (a trace of
    # waypoints only): such a layer is written without one
    unplaced = rows.select([table.c.id]).where(table.c.geom.is_(None)).order_by(None).limit(1)
    index = "NO" if conn.execute(unplaced).first() is not None else "YES"
    target = workdir / f"{collection.name}.fgb"
    return _write_stream(
        collection,
        names,
        read(statement),
        target,
        "FlatGeobuf",
        layer_options={"SPATIAL_INDEX": index},
    )


def _shapefile(
    conn: Connection,
    rows: ExportRows,
    statement: Select[Any],
    read: Callable[[Select[Any]], Iterator[Sequence[Any]]],
    workdir: Path,
) -> Path:
    """A zip of one Shapefile per geometry family present, each written as one stream."""
    collection = rows.collection
    fields = [short_name(n) for n in ["id", *(p.name for p in collection.properties)]]
    dimension = func.ST_Dimension(collection.table.c.geom)
    present = rows.select([dimension.label("dimension")]).order_by(None).subquery()
    found = conn.scalars(select(present.c.dimension).distinct())
    families = sorted(int(d) for d in found if d is not None)
    if not families:
        families = [_CANONICAL_DIMENSION.get(collection.geometry_types[0], 2)]
    parts = workdir / "parts"
    parts.mkdir()
    for family in families:
        suffix, geometry_type = FAMILIES[family]
        name = collection.name if len(families) == 1 else f"{collection.name}_{suffix}"
        chosen = statement
        if len(families) > 1:
            # a feature without geometry (a trace of waypoints only) goes with the first family
            chosen = statement.where(
                or_(dimension == family, dimension.is_(None))
                if family == families[0]
                else dimension == family
            )
        _write_stream(
            collection,
            fields,
            read(chosen),
            parts / f"{name}.shp",
            "ESRI Shapefile",
            geometry_type=geometry_type,
        )
    archive = workdir / f"{collection.name}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for part in sorted(parts.iterdir()):
            zf.write(part, part.name)
    return archive
