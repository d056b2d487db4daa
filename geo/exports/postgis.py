"""Exports whose bytes PostgreSQL builds: GeoJSON, CSV, KML and FlatGeobuf.

Each is read a batch at a time from a server-side cursor (CSV through
``COPY ... TO STDOUT``), so the application only joins and forwards bytes; it
never holds the interpreter for long and its memory stays bounded by a batch.

FlatGeobuf comes from ``ST_AsFlatGeobuf``, an aggregate: PostgreSQL builds the
whole file in one backend's memory (with its packed Hilbert R-tree, so QGIS and
GDAL read a bounding box without scanning the file) and the application fetches
it a megabyte at a time.  A FlatGeobuf value is a ``bytea``, so one export is at
most 1 GB (about 3.5 million demo structures with their index).  PostGIS writes
one geometry type per file, and 3.3 (Debian 12) mis-numbers the properties that
follow a NULL one, so :func:`flatgeobuf_safe` sends mixed layers, and on such a
server layers with NULLs, to GDAL instead.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any
from xml.sax.saxutils import escape

from sqlalchemy import (
    Connection,
    Text,
    cast,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.dialects import postgresql

from geo.exports.query import (
    GEOMETRY_DIGITS,
    ExportRows,
    batches,
    property_values,
    text_value,
)
from geo.layers.registry import Collection

__all__ = ["csv_chunks", "fgb_chunks", "flatgeobuf_safe", "geojson_chunks", "kml_chunks"]

FGB_CHUNK = 1 << 20
KML_NAMESPACE = "http://www.opengis.net/kml/2.2"


def _sql(expression: Any) -> str:
    """SQL text of an expression built from registry names and constants only."""
    dialect: Any = postgresql.dialect()  # type: ignore[no-untyped-call]
    return str(expression.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def geojson_chunks(conn: Connection, rows: ExportRows) -> Generator[bytes, None, None]:
    """A FeatureCollection; each Feature's ``id`` is Makazi's, also in its properties."""
    collection = rows.collection
    table = collection.table
    pairs: list[Any] = [literal("id"), table.c.id]
    for prop in collection.properties:
        value = table.c[prop.name]
        pairs += [literal(prop.name), value if prop.kind != "datetime" else text_value(prop, value)]
    geometry = func.coalesce(func.ST_AsGeoJSON(table.c.geom, GEOMETRY_DIGITS, 0), "null")
    feature = (
        literal('{"type":"Feature","id":')
        + cast(table.c.id, Text)
        + ',"geometry":'
        + geometry
        + ',"properties":'
        + cast(func.json_build_object(*pairs), Text)
        + "}"
    )
    statement = rows.select([feature.label("feature"), table.c.id])
    separator = b","
    if rows.after is None:
        yield b'{"type":"FeatureCollection","features":['
        separator = b""
    for batch in batches(conn, statement, rows.batch):
        rows.progress.last_id = batch[-1][1]
        yield separator + ",".join(row[0] for row in batch).encode()
        separator = b","
    yield b"]}"


def csv_chunks(conn: Connection, rows: ExportRows) -> Generator[bytes, None, None]:
    """CSV with a header, geometry as WKT in the last column, through ``COPY``.

    An empty field is NULL; an empty string is written quoted (``""``).
    """
    columns = [
        *property_values(rows.collection),
        func.ST_AsText(rows.collection.table.c.geom, GEOMETRY_DIGITS).label("WKT"),
    ]
    statement = rows.select(columns)
    compiled = statement.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    header = ", HEADER" if rows.after is None else ""
    copy_sql = f"COPY ({compiled}) TO STDOUT WITH (FORMAT csv{header})"
    # COPY takes no server-side parameters: psycopg binds these on the client.
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cursor, cursor.copy(copy_sql, compiled.params) as copy:
        # COPY sends a message per row: forward them a batch of rows at a time
        pending: list[bytes] = []
        for row in copy:
            pending.append(bytes(row))
            if len(pending) >= rows.batch:
                _note_csv_row(rows, pending[-1])
                yield b"".join(pending)
                pending = []
        if pending:
            _note_csv_row(rows, pending[-1])
        yield b"".join(pending)


def _note_csv_row(rows: ExportRows, record: bytes) -> None:
    """Note the id of a CSV record (its first field, an unquoted integer; not the header)."""
    first = record.split(b",", 1)[0]
    if first.isdigit():
        rows.progress.last_id = int(first)


def _label(collection: Collection) -> str:
    """The property a Placemark is named by: ``name``, else ``structure_number``, else id."""
    for name in ("name", "structure_number"):
        if collection.find(name) is not None:
            return name
    return "id"


def _placemark_sql(collection: Collection) -> str:
    """SQL text of one Placemark for a row of ``collection``'s table (XML-escaped by PostgreSQL).

    Every name comes from the registry.  A NULL property has no ``Data`` element.
    """
    table = collection.table
    prefix = table.name
    data = [
        "xmlelement(name \"Data\", xmlattributes('id' AS name), "
        f"xmlelement(name value, {prefix}.id))"
    ]
    for prop in collection.properties:
        value = _sql(text_value(prop, table.c[prop.name]))
        data.append(
            f'CASE WHEN {prefix}.{prop.name} IS NOT NULL THEN xmlelement(name "Data", '
            f"xmlattributes('{prop.name}' AS name), xmlelement(name value, {value})) END"
        )
    label = _label(collection)
    return (
        f"xmlelement(name \"Placemark\", xmlattributes('{collection.name}.' || {prefix}.id AS id), "
        f"xmlelement(name name, coalesce({prefix}.{label}::text, {prefix}.id::text)), "
        f'xmlelement(name "ExtendedData", xmlconcat({", ".join(data)})), '
        f"ST_AsKML({prefix}.geom, {GEOMETRY_DIGITS})::xml)::text"
    )


def kml_chunks(conn: Connection, rows: ExportRows) -> Generator[bytes, None, None]:
    """A KML document: one Folder of Placemarks, each property as ``ExtendedData/Data``."""
    collection = rows.collection
    placemark = literal_column(_placemark_sql(collection), Text)
    statement = rows.select([placemark.label("placemark"), collection.table.c.id])
    title = escape(collection.title)
    if rows.after is None:
        yield (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<kml xmlns="{KML_NAMESPACE}"><Document>'
            f"<name>{title}</name><Folder><name>{escape(collection.name)}</name>\n"
        ).encode()
    for batch in batches(conn, statement, rows.batch):
        rows.progress.last_id = batch[-1][1]
        yield "\n".join(row[0] for row in batch).encode() + b"\n"
    yield b"</Folder></Document></kml>\n"


_NULL_PROBE_VALUE = 0x1A2B3C4D
_encodes_nulls: dict[str, bool] = {}


def _encodes_nulls_right(conn: Connection) -> bool:
    """Whether this server's ST_AsFlatGeobuf numbers a property after a NULL one correctly.

    Probed once per database: a row (NULL, v) must encode v under column index 1.
    """
    key = conn.engine.url.render_as_string(hide_password=True)
    if key not in _encodes_nulls:
        probe = conn.execute(
            text(
                "SELECT ST_AsFlatGeobuf(q, false, 'g') FROM (SELECT NULL::integer AS n, "
                ":v AS v, 'POINT(1 1)'::geometry AS g) q"
            ),
            {"v": _NULL_PROBE_VALUE},
        ).scalar_one()
        expected = (1).to_bytes(2, "little") + _NULL_PROBE_VALUE.to_bytes(4, "little")
        _encodes_nulls[key] = expected in bytes(probe)
    return _encodes_nulls[key]


def flatgeobuf_safe(conn: Connection, rows: ExportRows) -> bool:
    """Whether ``ST_AsFlatGeobuf`` writes these rows right: one geometry type, every row
    with a geometry (its spatial index writes a feature without one as a geometry GDAL
    cannot read), NULL properties handled."""
    table = rows.collection.table
    nulls = or_(*(table.c[p.name].is_(None) for p in rows.collection.properties))
    columns = [
        func.count(func.distinct(func.GeometryType(table.c.geom))),
        func.coalesce(func.bool_or(table.c.geom.is_(None)), False),
        func.coalesce(func.bool_or(nulls), False),
    ]
    kinds, unplaced, has_nulls = conn.execute(rows.select(columns).order_by(None)).one()
    return bool(kinds == 1 and not unplaced and (not has_nulls or _encodes_nulls_right(conn)))


def fgb_chunks(conn: Connection, rows: ExportRows) -> Generator[bytes, None, None]:
    """FlatGeobuf with a spatial index from ``ST_AsFlatGeobuf``, a megabyte at a time.

    Only for rows :func:`flatgeobuf_safe` accepts.  One aggregate builds the whole
    file, so it cannot resume after a row (``rows.after`` must be None).
    """
    assert rows.after is None, "a FlatGeobuf is built whole"
    columns = [*property_values(rows.collection), rows.collection.table.c.geom]
    layer = rows.select(columns).subquery("q")
    built = (
        select(func.ST_AsFlatGeobuf(layer.table_valued(), True, "geom").label("fgb"))
        .select_from(layer)
        .subquery("f")
    )
    starts = (
        func.generate_series(1, func.length(built.c.fgb), FGB_CHUNK)
        .table_valued("start")
        .render_derived(name="starts")  # a function in FROM sees f: implicitly LATERAL
    )
    pieces = (
        select(func.substring(built.c.fgb, starts.c.start, FGB_CHUNK))
        .select_from(built.join(starts, true()))
        .order_by(starts.c.start)
    )
    for chunk_rows in batches(conn, pieces, 1):
        yield from (bytes(row[0]) for row in chunk_rows)
