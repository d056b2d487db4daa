"""Exports only GDAL writes: GeoPackage, zipped Shapefile (and FlatGeobuf of mixed geometry).

:func:`write_file` reads the rows a batch at a time from a server-side cursor
and hands GDAL (pyogrio) the geometries as PostGIS's WKB, so nothing is parsed
in Python.  GDAL holds the interpreter while it writes: the service runs this
in a worker process (:mod:`geo.exports.worker`), the CLI in its own process.

- GeoPackage 1.2 (``VERSION=1.2``): QGIS 3.22 and GDAL 3.6 (Debian 12) read
  it fully; 1.4 makes them warn that it "may only be partially supported".
- Shapefile: one ``.shp`` per geometry family (``<layer>.shp`` when there is one
  family, else ``<layer>_points``/``_lines``/``_polygons``), geometries as
  Multi*, field names from :mod:`geo.exports.shapefile`, ``.cpg`` (UTF-8) and
  ``.prj`` beside it, all in one zip.  dBASE holds at most 254 bytes of text
  per field: longer notes are cut by the format.
- FlatGeobuf cannot be appended to, so a mixed-geometry layer is collected in
  the worker and written once.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func

from geo.core.auth import Principal
from geo.exports.query import batches, export_statement, property_values
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


def _arrays(collection: Collection, rows: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """Column arrays and their null masks for ``id`` and every property."""
    import numpy as np

    kinds = ["id", *(p.kind for p in collection.properties)]
    data: list[Any] = []
    masks: list[Any] = []
    for index, kind in enumerate(kinds):
        values = [row[index] for row in rows]
        mask = np.array([v is None for v in values], dtype=bool)
        if kind in ("id", "integer"):
            array = np.array([0 if v is None else v for v in values], dtype=np.int64)
        elif kind == "number":
            array = np.array([0.0 if v is None else v for v in values], dtype=np.float64)
        elif kind == "boolean":
            array = np.array([bool(v) for v in values], dtype=bool)
        else:
            array = np.array(["" if v is None else str(v) for v in values], dtype=object)
        data.append(array)
        masks.append(mask)
    return data, masks


def _write(
    path: Path,
    collection: Collection,
    rows: Sequence[Any],
    fields: list[str],
    *,
    driver: str,
    geometry_type: str,
    append: bool,
    layer: str,
    options: dict[str, str],
) -> None:
    import numpy as np
    from pyogrio.raw import write

    data, masks = _arrays(collection, rows)
    geometry = np.array([bytes(row[len(fields)]) for row in rows], dtype=object)
    write(
        path,
        geometry,
        data,
        fields,
        field_mask=masks,
        layer=layer,
        driver=driver,
        geometry_type=geometry_type,
        crs="EPSG:4326",
        encoding="UTF-8" if driver == "ESRI Shapefile" else None,
        append=append,
        dataset_options=None if append else options,
    )


def write_file(
    conn: Connection,
    collection: Collection,
    fmt: str,
    workdir: Path,
    *,
    user: Principal | None,
    settlement_id: int | None,
    batch: int,
    on_batch: Callable[[], None] | None = None,
) -> Path:
    """Write the export as ``fmt`` (``gpkg``, ``shp`` or ``fgb``) into ``workdir``.

    ``on_batch`` is called before each batch (a worker checks that its parent is
    still there).  Returns the file to send (a zip for Shapefile).
    """
    table = collection.table
    names = ["id", *(p.name for p in collection.properties)]
    geometry = func.ST_Multi(table.c.geom) if fmt == "shp" else table.c.geom
    columns = [*property_values(collection), func.ST_AsBinary(geometry).label("wkb")]
    if fmt == "shp":
        columns.append(func.ST_Dimension(table.c.geom).label("dimension"))
    statement = export_statement(collection, columns, user=user, settlement_id=settlement_id)
    rows = batches(conn, statement, batch)
    if fmt == "gpkg":
        return _gpkg(collection, names, rows, workdir, on_batch)
    if fmt == "shp":
        return _shapefile(collection, names, rows, workdir, on_batch)
    return _fgb(collection, names, rows, workdir, on_batch)


def _gpkg(
    collection: Collection,
    names: list[str],
    row_batches: Iterator[Sequence[Any]],
    workdir: Path,
    on_batch: Callable[[], None] | None,
) -> Path:
    target = workdir / f"{collection.name}.gpkg"
    written = False
    for rows in row_batches:
        if on_batch:
            on_batch()
        _write(
            target,
            collection,
            rows,
            names,
            driver="GPKG",
            geometry_type="Unknown",
            append=written,
            layer=collection.name,
            options={"VERSION": "1.2"},
        )
        written = True
    if not written:
        _write(
            target,
            collection,
            [],
            names,
            driver="GPKG",
            geometry_type="Unknown",
            append=False,
            layer=collection.name,
            options={"VERSION": "1.2"},
        )
    return target


def _shapefile(
    collection: Collection,
    names: list[str],
    row_batches: Iterator[Sequence[Any]],
    workdir: Path,
    on_batch: Callable[[], None] | None,
) -> Path:
    fields = [short_name(n) for n in names]
    parts = workdir / "parts"
    parts.mkdir()
    written: set[int] = set()

    def write(dimension: int, rows: Sequence[Any]) -> None:
        suffix, geometry_type = FAMILIES[dimension]
        _write(
            parts / f"{collection.name}_{suffix}.shp",
            collection,
            rows,
            fields,
            driver="ESRI Shapefile",
            geometry_type=geometry_type,
            append=dimension in written,
            layer=f"{collection.name}_{suffix}",
            options={},
        )
        written.add(dimension)

    for rows in row_batches:
        if on_batch:
            on_batch()
        by_dimension: dict[int, list[Any]] = {}
        for row in rows:
            by_dimension.setdefault(int(row[-1]), []).append(row)
        for dimension, group in sorted(by_dimension.items()):
            write(dimension, group)
    if not written:
        kind = collection.geometry_types[0]
        write(_CANONICAL_DIMENSION.get(kind, 2), [])
    if len(written) == 1:
        (dimension,) = written
        stem = f"{collection.name}_{FAMILIES[dimension][0]}"
        for part in parts.glob(f"{stem}.*"):
            part.rename(parts / f"{collection.name}{part.suffix}")
    archive = workdir / f"{collection.name}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for part in sorted(parts.iterdir()):
            zf.write(part, part.name)
    return archive


def _fgb(
    collection: Collection,
    names: list[str],
    row_batches: Iterator[Sequence[Any]],
    workdir: Path,
    on_batch: Callable[[], None] | None,
) -> Path:
    target = workdir / f"{collection.name}.fgb"
    rows: list[Any] = []
    for part in row_batches:
        if on_batch:
            on_batch()
        rows.extend(part)
    _write(
        target,
        collection,
        rows,
        names,
        driver="FlatGeobuf",
        geometry_type="Unknown",
        append=False,
        layer=collection.name,
        options={},
    )
    return target
