"""Reading an uploaded vector file: sniffing, unpacking, hostile-file checks, batches.

An upload (a :class:`~geo.core.uploads.SpooledBody` or a local file) is turned
into a :class:`Source`: a dataset on disk in a private temporary folder that
GDAL (through pyogrio) can open, the layers to read and their CRS.  Before GDAL
sees any byte the upload is checked:

* archives (zip, KMZ, gzip) are unpacked through :func:`geo.core.uploads.members`
  (decompressed size and member count limits, so a zip bomb stops early) and
  every member name is checked for path traversal;
* a KML's bytes are searched for ``<!DOCTYPE``/``<!ENTITY`` (XML entity bombs);
* a CSV's lines are measured while it is written (``import_max_line_kb``);
* the format is named from the bytes (SQLite, FlatGeobuf, XML, JSON), so a
  ``.gpkg`` that is not SQLite is refused by name.

:meth:`Source.batches` then reads features ``batch_size`` at a time, in EPSG:4326
2D WKB, with the feature's index in its layer and its source id: the reader
interface any other reader (e.g. an enumeration export) can provide too.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

import numpy as np
import pyarrow
import pyarrow.types
import pyogrio
import pyogrio.errors
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError

from geo.core.errors import BadRequest, TooLarge, UnsupportedMediaType
from geo.core.uploads import CHUNK, BadArchive, UploadError, members, sniff

__all__ = [
    "Batch",
    "Limits",
    "Reader",
    "Source",
    "UnreadableFile",
    "check_stream",
    "content_id",
    "open_source",
    "reproject",
    "text_value",
]

#: Formats we read, by the suffix of the file GDAL opens.
SUFFIXES = {
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".gpkg": "GeoPackage",
    ".shp": "Shapefile",
    ".kml": "KML",
    ".fgb": "FlatGeobuf",
    ".csv": "CSV",
}
#: Which member of an archive is the dataset, in order of preference.
_PREFERENCE = (".shp", ".gpkg", ".kml", ".fgb", ".geojson", ".json", ".csv")
#: Columns that hold a feature's own id (case-insensitive), in order of preference.
ID_COLUMNS = ("id", "fid", "@id", "osm_id", "uuid", "globalid", "instanceid", "key")
_CSV_OPTIONS = {
    "GEOM_POSSIBLE_NAMES": "WKT,wkt,geom,geometry,the_geom,shape",
    "X_POSSIBLE_NAMES": "lon,Lon,LON,longitude,Longitude,LONGITUDE,lng,long,x,X",
    "Y_POSSIBLE_NAMES": "lat,Lat,LAT,latitude,Latitude,LATITUDE,y,Y",
    "KEEP_GEOM_COLUMNS": "NO",
}
_XML_BOMB = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_WGS84 = CRS.from_epsg(4326)


class UnreadableFile(UploadError):
    """The upload is not a file of a format we read, or GDAL cannot read it (400)."""

    slug = "unreadable-file"


def _gdal_error(what: str, exc: Exception) -> UnreadableFile:
    """``what`` with GDAL's message, without the private folder's path in it."""
    if isinstance(exc, UnicodeError):
        return UnreadableFile(f"{what}: its names or text are not in the encoding it declares")
    message = re.sub(r"\S*makazi-import-[^/\s]+/data/", "", str(exc)).strip()
    return UnreadableFile(f"{what}: {message}")


@dataclass(frozen=True)
class Limits:
    """The limits an import reads a file under (from the settings)."""

    max_decompressed_bytes: int
    max_archive_members: int
    max_line_bytes: int
    batch_size: int = 5_000
    timeout_ms: int = 3_600_000


@dataclass
class Batch:
    """Features read from one layer, in file order.

    Attributes
    ----------
    layer
        The layer they come from.
    indexes
        Each feature's 0-based position in its layer.
    source_ids
        Each feature's id in the file (an id column or the GeoPackage fid) or
        ``None`` when it has none (a content hash is used then).
    wkb
        EPSG:4326 2D hex EWKB, ``None`` when the geometry cannot be used.
    problems
        Why a geometry cannot be used (``None`` when it can): missing, empty,
        not finite, outside longitude/latitude.
    rows
        Each feature's attributes as ``{column: value}`` (strings, numbers, None).
    """

    layer: str
    indexes: list[int]
    source_ids: list[str | None]
    wkb: list[str | None]
    problems: list[str | None]
    rows: list[dict[str, Any]]


@dataclass
class Layer:
    """One layer to read: its name, feature count, columns and CRS."""

    name: str
    features: int
    geometry_type: str | None
    columns: list[str]
    crs: CRS | None


class Reader(Protocol):
    """What the pipeline reads from: a GDAL dataset or an enumeration export."""

    format: str
    layers: list[Layer]
    warnings: list[str]
    skipped: int

    @property
    def total(self) -> int: ...

    @property
    def columns(self) -> list[str]: ...

    def batches(self, batch_size: int) -> Iterator[Batch]: ...

    def close(self) -> None: ...


@dataclass
class Source:
    """A readable dataset in a private folder (removed by :meth:`close`)."""

    folder: Path
    path: Path
    format: str
    layers: list[Layer]
    warnings: list[str] = field(default_factory=list)
    open_options: dict[str, str] = field(default_factory=dict)
    fid_is_id: bool = False
    skipped: int = 0

    @property
    def total(self) -> int:
        """How many features the chosen layers hold."""
        return sum(max(layer.features, 0) for layer in self.layers)

    @property
    def columns(self) -> list[str]:
        """The source columns, in file order (over all chosen layers)."""
        seen: dict[str, None] = {}
        for layer in self.layers:
            seen.update(dict.fromkeys(layer.columns))
        return list(seen)

    def close(self) -> None:
        """Remove the unpacked files."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """Every feature of the chosen layers, ``batch_size`` at a time.

        Each layer is read in one pass (GDAL's Arrow stream): reading batch by
        batch with ``skip_features`` made GDAL step over every feature before
        the batch again (a GeoPackage of 1,000,000 features: 0.15 s a batch by
        the end), and opened a GeoJSON file, parsing it, once a batch.
        """
        for layer in self.layers:
            transformer = _transformer(layer.crs)
            start = 0
            try:
                with (
                    _curves_fall_back(),
                    pyogrio.raw.open_arrow(
                        str(self.path),
                        layer=layer.name,
                        return_fids=True,
                        batch_size=batch_size,
                        use_pyarrow=True,
                        **self.open_options,
                    ) as (meta, reader),
                ):
                    for record in _records(reader, layer.name, start):
                        if record.num_rows:
                            yield self._batch(layer, transformer, start, meta, record)
                            start += record.num_rows
            except _Curves:
                if start:  # only ever raised on opening the stream
                    raise
                yield from self._batches_by_offset(layer, transformer, batch_size)
            except (
                pyogrio.errors.DataSourceError,
                pyogrio.errors.DataLayerError,
                UnicodeError,
            ) as exc:
                raise _gdal_error(f"cannot read layer {layer.name!r}", exc) from exc

    def _batch(
        self, layer: Layer, transformer: Transformer | None, start: int, meta: Any, record: Any
    ) -> Batch:
        """One Arrow record batch as a :class:`Batch`."""
        names = [str(n) for n in meta["fields"]]
        geometry_name = meta.get("geometry_name") or "wkb_geometry"
        geometry = (
            _flat(_numpy(record.column(geometry_name)))
            if geometry_name in record.schema.names
            else None
        )
        return self._assemble(
            layer,
            transformer,
            start,
            int(record.num_rows),
            {name: _numpy(record.column(name)) for name in names},
            geometry,
            record.column(meta["fid_column"]).to_pylist() if self.fid_is_id else [],
        )

    def _assemble(
        self,
        layer: Layer,
        transformer: Transformer | None,
        start: int,
        count: int,
        fields: dict[str, Any],
        geometry: Any,
        fids: Any,
    ) -> Batch:
        """A :class:`Batch` from a layer's columns (NumPy arrays), WKB and fids."""
        columns = {name: _python_values(values) for name, values in fields.items()}
        rows = [{name: column[i] for name, column in columns.items()} for i in range(count)]
        wkb, problems = reproject(geometry, transformer, count)
        id_column = _id_column(list(fields))
        source_ids: list[str | None]
        if id_column is not None:
            source_ids = [text_value(row[id_column]) for row in rows]
        elif self.fid_is_id:
            source_ids = [f"{layer.name}:{int(fid)}" for fid in fids]
        else:
            source_ids = [None] * count
        return Batch(
            layer=layer.name,
            indexes=list(range(start, start + count)),
            source_ids=source_ids,
            wkb=wkb,
            problems=problems,
            rows=rows,
        )

    def _batches_by_offset(
        self, layer: Layer, transformer: Transformer | None, batch_size: int
    ) -> Iterator[Batch]:
        """A layer read batch by batch (``skip_features``): for curves, which GDAL's
        Arrow stream does not give and ``pyogrio.raw.read`` linearises."""
        start = 0
        while True:
            batch = self._read(layer, transformer, start, batch_size)
            if batch is None:
                break
            yield batch
            start += len(batch.indexes)
            if len(batch.indexes) < batch_size:
                break

    def _read(
        self, layer: Layer, transformer: Transformer | None, start: int, size: int
    ) -> Batch | None:
        try:
            meta, fids, geometry, field_data = pyogrio.raw.read(
                str(self.path),
                layer=layer.name,
                skip_features=start,
                max_features=size,
                return_fids=True,
                force_2d=True,
                **self.open_options,
            )
        except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, UnicodeError) as exc:
            raise _gdal_error(f"cannot read layer {layer.name!r}", exc) from exc
        except (pyogrio.errors.CRSError, pyogrio.errors.FeatureError) as exc:
            raise _gdal_error(
                f"cannot read feature {start} or after in layer {layer.name!r}", exc
            ) from exc
        count = len(geometry) if geometry is not None else len(fids)
        if count == 0:
            return None
        names = [str(n) for n in meta["fields"]]
        return self._assemble(
            layer,
            transformer,
            start,
            count,
            dict(zip(names, field_data, strict=True)),
            geometry,
            fids,
        )


def content_id(wkb: str | None, row: dict[str, Any]) -> str:
    """A stable id for a feature that has none: a hash of its geometry and attributes."""
    digest = hashlib.sha256((wkb or "").encode())
    digest.update(json.dumps(row, sort_keys=True, default=str).encode())
    return "sha256:" + digest.hexdigest()[:32]


def text_value(value: Any) -> str | None:
    """A source value as text: whole floats without ``.0``, stripped, ``None`` when empty.

    >>> text_value(12.0), text_value("  "), text_value(True)
    ('12', None, 'true')
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).replace("\x00", "").strip()  # PostgreSQL text cannot hold NUL
    return text or None


def _id_column(names: list[str]) -> str | None:
    by_fold = {name.casefold(): name for name in names}
    for candidate in ID_COLUMNS:
        if candidate in by_fold:
            return by_fold[candidate]
    return None


class _Curves(Exception):
    """The layer holds curves, which GDAL's Arrow stream cannot give."""


@contextmanager
def _curves_fall_back() -> Iterator[None]:
    try:
        yield
    except NotImplementedError as exc:  # pyogrio: "Nonlinear geometry types are not ..."
        raise _Curves from exc


def _flat(geometry: Any) -> Any:
    """WKB as GDAL gives it with ``force_2d`` (Z and M dropped; 2D WKB untouched)."""
    deep = [i for i, wkb in enumerate(geometry.tolist()) if wkb is not None and _has_zm(wkb)]
    if not deep:
        return geometry
    flat = shapely.force_2d(shapely.from_wkb(geometry[deep], on_invalid="ignore"))
    out = geometry.copy()
    out[deep] = shapely.to_wkb(flat, output_dimension=2, byte_order=1, flavor="iso")
    return out


def _has_zm(wkb: bytes) -> bool:
    """Whether a WKB geometry has Z or M (ISO type codes or EWKB flags)."""
    kind = int.from_bytes(wkb[1:5], "little" if wkb[:1] == b"\x01" else "big")
    return kind >= 1000 or bool(kind & 0xC0000000)


def _records(reader: Any, layer: str, start: int) -> Iterator[Any]:
    """The record batches of an Arrow stream, GDAL's errors while reading named."""
    while True:
        try:
            record = reader.read_next_batch()
        except StopIteration:
            return
        except (
            pyarrow.ArrowException,
            pyogrio.errors.CRSError,
            pyogrio.errors.FeatureError,
            OSError,
            UnicodeError,
        ) as exc:
            raise _gdal_error(
                f"cannot read feature {start} or after in layer {layer!r}", exc
            ) from exc
        yield record
        start += record.num_rows


def _numpy(column: Any) -> Any:
    """An Arrow column as the NumPy array ``pyogrio.raw.read`` would give (nulls: None/NaN)."""
    kind = column.type
    if pyarrow.types.is_timestamp(kind) and kind.tz is not None:
        column = column.cast(pyarrow.timestamp(kind.unit))
    if pyarrow.types.is_dictionary(kind):
        column = column.dictionary_decode()
    return column.to_numpy(zero_copy_only=False)


def _python_values(values: Any) -> list[Any]:
    """A column as Python values: NaN and NaT become None, dates ISO text."""
    out: list[Any] = []
    kind = getattr(values, "dtype", None)
    if kind is not None and np.issubdtype(kind, np.datetime64):
        return [None if np.isnat(v) else str(v) for v in values]
    if kind is not None and kind.kind in "iub":
        return list(values.tolist())
    if kind is not None and kind.kind == "f":
        floats: list[Any] = values.tolist()
        for i in np.flatnonzero(np.isnan(values)).tolist():
            floats[i] = None
        return floats
    for value in values.tolist() if hasattr(values, "tolist") else values:
        if isinstance(value, float) and math.isnan(value):
            out.append(None)
        elif isinstance(value, bytes):
            out.append(value.hex())
        else:
            out.append(value)
    return out


def _transformer(crs: CRS | None) -> Transformer | None:
    if crs is None or crs.equals(_WGS84, ignore_axis_order=True):
        return None
    return Transformer.from_crs(crs, _WGS84, always_xy=True)


def reproject(
    geometry: Any, transformer: Transformer | None, count: int
) -> tuple[list[str | None], list[str | None]]:
    """EPSG:4326 hex EWKB and the geometry problems of a batch of WKB (vectorised)."""
    if geometry is None:
        return [None] * count, ["geometry is missing"] * count
    raw = np.asarray(geometry, dtype=object)
    geoms = shapely.from_wkb(raw, on_invalid="ignore")
    if transformer is not None:

        def move(coords: np.ndarray) -> np.ndarray:
            x, y = transformer.transform(coords[:, 0], coords[:, 1])
            return np.column_stack([x, y])

        geoms = shapely.transform(geoms, move)
    if shapely.has_z(geoms).any():
        geoms = shapely.force_2d(geoms)
    coords, owner = shapely.get_coordinates(geoms, return_index=True)
    not_finite = np.zeros(count, dtype=bool)
    not_finite[owner[~np.isfinite(coords).all(axis=1)]] = True
    xmin, ymin, xmax, ymax = shapely.bounds(geoms).T
    with np.errstate(invalid="ignore"):
        outside = (xmin < -180) | (xmax > 180) | (ymin < -90) | (ymax > 90)
    masks = [
        np.array([value is None for value in raw], dtype=bool),
        shapely.is_missing(geoms),
        shapely.is_empty(geoms),
        not_finite,
        outside,
    ]
    kinds = np.zeros(count, dtype=np.int64)
    for code in range(len(masks), 0, -1):  # the first problem found is the one named
        kinds[masks[code - 1]] = code
    problems: list[str | None] = [_GEOMETRY_PROBLEMS[k] for k in kinds.tolist()]
    if transformer is None:
        out = [None if problem else _ewkb(raw[i]) for i, problem in enumerate(problems)]
        redo = [i for i, value in enumerate(out) if value is None and not problems[i]]
    else:
        out = [None] * count
        redo = [i for i, problem in enumerate(problems) if not problem]
    if redo:
        ewkb = shapely.to_wkb(shapely.set_srid(geoms[redo], 4326), hex=True, include_srid=True)
        for i, value in zip(redo, ewkb.tolist(), strict=True):
            out[i] = str(value)
    return out, problems


def _ewkb(wkb: bytes) -> str | None:
    """Little-endian 2D WKB as hex EWKB in EPSG:4326 (the SRID spliced in), else None.

    Cheaper than parsing and writing it again; anything else goes through shapely.
    """
    if wkb[:1] != b"\x01":
        return None
    kind = int.from_bytes(wkb[1:5], "little")
    if kind >= 1000 or kind & 0xE0000000:  # Z/M (ISO or EWKB flags) or an SRID already
        return None
    return (
        wkb[:1] + (kind | 0x20000000).to_bytes(4, "little") + b"\xe6\x10\x00\x00" + wkb[5:]
    ).hex()


#: :func:`reproject`'s problems by number (0: none).
_GEOMETRY_PROBLEMS: tuple[str | None, ...] = (
    None,
    "geometry is missing",
    "geometry cannot be read (malformed WKB)",
    "geometry is empty",
    "geometry has coordinates that are not numbers (NaN or infinite)",
    "geometry lies outside longitude [-180, 180] / latitude [-90, 90] once in "
    "EPSG:4326: is the file's CRS right? (give source_crs)",
)


# -- unpacking -----------------------------------------------------------------------------------


def _safe_member(name: str) -> PurePosixPath:
    """The member's relative path, or :class:`BadArchive` for path traversal."""
    normal = name.replace("\\", "/")
    path = PurePosixPath(normal)
    if path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", normal):
        raise BadArchive(f"zip member {name!r} points outside the archive (path traversal)")
    return path


class _Checker:
    """Watches bytes as they are written: XML entity declarations, CSV line length."""

    def __init__(self, suffix: str, limits: Limits, name: str) -> None:
        self.xml = suffix in {".kml", ".xml"}
        self.csv = suffix in {".csv", ".txt", ".tsv"}
        self.limits = limits
        self.name = name
        self.tail = b""
        self.line = 0
        self.line_number = 1

    def feed(self, chunk: bytes) -> None:
        if self.xml:
            window = self.tail + chunk
            if _XML_BOMB.search(window):
                raise UnreadableFile(
                    f"{self.name}: XML with a DOCTYPE or ENTITY declaration is refused "
                    "(entity expansion); KML needs neither"
                )
            self.tail = window[-16:]
        if self.csv:
            for piece in chunk.split(b"\n")[:-1] if b"\n" in chunk else []:
                self.line += len(piece)
                self._check()
                self.line = 0
                self.line_number += 1
            self.line += len(chunk) - (chunk.rfind(b"\n") + 1)
            self._check()

    def _check(self) -> None:
        if self.line > self.limits.max_line_bytes:
            raise TooLarge(
                f"{self.name}: line {self.line_number} is longer than "
                f"{self.limits.max_line_bytes // 1024} KB (MAKAZI_IMPORT_MAX_LINE_KB)",
                line=self.line_number,
            )


def check_stream(stream: IO[bytes] | Any, suffix: str, limits: Limits, name: str) -> None:
    """Read ``stream`` through the hostile-content checks of a ``suffix`` file, keeping nothing."""
    checker = _Checker(suffix, limits, name)
    while chunk := stream.read(CHUNK):
        checker.feed(chunk)


def _copy(stream: IO[bytes] | Any, target: Path, limits: Limits, name: str) -> None:
    checker = _Checker(target.suffix.lower(), limits, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        while chunk := stream.read(CHUNK):
            checker.feed(chunk)
            out.write(chunk)


def _kind_of(head: bytes, filename: str) -> str:
    """The suffix GDAL should see for a single file, from its bytes and name."""
    suffix = Path(filename).suffix.lower()
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"SQLite format 3\x00"):
        return ".gpkg"
    if suffix == ".gpkg":
        raise UnreadableFile(f"{filename} is not a GeoPackage: the file is not an SQLite database")
    if head.startswith(b"fgb\x03"):
        return ".fgb"
    if suffix == ".fgb":
        raise UnreadableFile(f"{filename} is not a FlatGeobuf file (no 'fgb' magic bytes)")
    if text.startswith(b"<"):
        if b"<kml" in head or suffix == ".kml":
            return ".kml"
        raise UnsupportedMediaType(
            f"{filename or 'the upload'} is XML but not KML; we read GeoJSON, GeoPackage, "
            "zipped Shapefile, KML/KMZ, FlatGeobuf and CSV"
        )
    if text.startswith((b"{", b"[")):
        return ".geojson"
    if suffix in {".shp", ".shx", ".dbf", ".prj"}:
        raise UnreadableFile(
            f"{filename}: send a Shapefile as a zip holding its .shp, .shx, .dbf and .prj"
        )
    if suffix in {".csv", ".txt", ".tsv"} or (text and b"\x00" not in head):
        return ".csv"
    raise UnsupportedMediaType(
        f"{filename or 'the upload'} is not a format we read: GeoJSON, GeoPackage, zipped "
        "Shapefile, KML/KMZ, FlatGeobuf or CSV (WKT or lon/lat columns)"
    )


#: The parts of one layer a Shapefile export splits by geometry family (geo/exports/gdal.py).
_FAMILY_PART = re.compile(r"^(?P<layer>.+)_(?:points|lines|polygons)$")


def _one_of(found: list[Path], layer: str | None) -> Path:
    """The dataset of an archive that holds several of one kind (``layer`` names it).

    The ``<layer>_points``/``_lines``/``_polygons`` Shapefiles of one export, side
    by side, are read together: their folder is the dataset, each a layer of it.
    """
    by_name = {path.stem: path for path in found}
    if layer is not None and layer in by_name:
        return by_name[layer]
    parts = {m.group("layer") if (m := _FAMILY_PART.match(name)) else None for name in by_name}
    folders = {path.parent for path in found}
    one_export = len(folders) == 1 and len(parts) == 1 and None not in parts
    if layer is None and found[0].suffix.lower() == ".shp" and one_export:
        return found[0].parent
    listing = ", ".join(by_name)
    raise BadRequest(
        f"the zip archive holds {len(found)} {found[0].suffix} files; choose one with "
        f"'layer': {listing}",
        slug="layer-required",
        field="layer",
        layers=[{"name": name} for name in by_name],
    )


def _unpack(
    file: IO[bytes], filename: str, folder: Path, limits: Limits, layer: str | None
) -> tuple[Path, list[Path]]:
    """Write the upload into ``folder``: the dataset to open and, for an archive, its files."""
    container = sniff(file)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(filename).stem)[:60] or "upload"
    from geo.imports.kobo import is_xlsx, kobo_to_csv

    if container == "zip" and is_xlsx(file):  # a KoboToolbox export
        workbook = folder / f"{stem}.xlsx"
        with workbook.open("wb") as out:
            shutil.copyfileobj(file, out, CHUNK)
        (folder / "data").mkdir()
        sheets = kobo_to_csv(workbook, folder / "data", limits)
        return sheets[0], sheets
    if container == "zip":
        written: list[Path] = []
        for member in members(
            file,
            limit=limits.max_decompressed_bytes,
            max_members=limits.max_archive_members,
        ):
            assert member.name is not None
            relative = _safe_member(member.name)
            target = folder / "data" / relative
            _copy(member.stream, target, limits, member.name)
            written.append(target)
        found = [
            path for suffix in _PREFERENCE for path in written if path.suffix.lower() == suffix
        ]
        found = [path for path in found if path.suffix.lower() == found[0].suffix.lower()]
        if len(found) > 1 and found[0].suffix.lower() != ".csv":
            return _one_of(found, layer), written
        if not found:
            names = ", ".join(p.name for p in written[:10]) or "nothing"
            raise UnreadableFile(
                f"the zip archive holds no file we can import ({names}); we read .shp (with "
                ".shx, .dbf, .prj), .gpkg, .kml, .fgb, .geojson and .csv"
            )
        return found[0], written
    (member,) = list(
        members(file, limit=limits.max_decompressed_bytes, max_members=limits.max_archive_members)
    )
    head = member.stream.read(4096)
    suffix = _kind_of(head, filename)
    target = folder / "data" / f"{stem}{suffix}"
    checker = _Checker(suffix, limits, filename or "the upload")
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        chunk = head
        while chunk:
            checker.feed(chunk)
            out.write(chunk)
            chunk = member.stream.read(CHUNK)
    return target, []


# -- opening -------------------------------------------------------------------------------------


def _parse_crs(value: str) -> CRS:
    try:
        return CRS.from_user_input(value if not value.isdigit() else f"EPSG:{value}")
    except CRSError as exc:
        raise BadRequest(
            f"source_crs {value!r} is not a CRS we know: {exc}", field="source_crs"
        ) from exc


def _layer(path: Path, name: str, options: dict[str, str]) -> Layer:
    try:
        info = pyogrio.read_info(str(path), layer=name, force_feature_count=True, **options)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, UnicodeError) as exc:
        raise _gdal_error(f"cannot read layer {name!r}", exc) from exc
    crs = None
    if info.get("crs"):
        try:
            crs = CRS.from_user_input(info["crs"])
        except CRSError:
            crs = None
    return Layer(
        name=name,
        features=int(info.get("features") or 0),
        geometry_type=info.get("geometry_type"),
        columns=[str(c) for c in info.get("fields", [])],
        crs=crs,
    )


def open_source(
    file: IO[bytes],
    *,
    filename: str | None,
    limits: Limits,
    layer: str | None = None,
    source_crs: str | None = None,
    geometry: str | None = None,
) -> Reader:
    """Unpack and open an upload; the layers to import chosen.

    Parameters
    ----------
    file
        The upload, seekable, at position 0.
    filename
        The name it came with (its suffix helps tell CSV from other text).
    layer
        The layer to import; needed when a file (other than KML) has several.
        KML folders are each a layer; without ``layer`` all of them are read.
    source_crs
        The CRS of the coordinates (``EPSG:21037``, ``21037``, WKT), overriding
        the file's own; a file that names none is read as EPSG:4326.
    geometry
        For a form export (ODK CSV zip): the geoshape column or geopoint that
        holds each submission's geometry.

    Raises
    ------
    UnreadableFile, BadArchive, UnsupportedMediaType, TooLarge
        Hostile, broken or unknown files (nothing is read).
    BadRequest
        Several layers and none chosen (they are listed), or an unknown layer.
    """
    folder = Path(tempfile.mkdtemp(prefix="makazi-import-"))
    try:
        path, written = _unpack(file, filename or "", folder, limits, layer)
        from geo.imports.enumeration import is_enumeration, open_enumeration

        if written and is_enumeration(written):
            return open_enumeration(folder, written, geometry=geometry)
        if layer == path.stem and path.suffix.lower() == ".shp":
            layer = None  # named the shapefile in the archive: its one layer
        return _open(folder, path, limits, layer, source_crs)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _open(
    folder: Path, path: Path, limits: Limits, layer: str | None, source_crs: str | None
) -> Source:
    fmt = "Shapefile" if path.is_dir() else SUFFIXES[path.suffix.lower()]
    options = dict(_CSV_OPTIONS) if fmt == "CSV" else {}
    try:
        listed = pyogrio.list_layers(str(path))
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, UnicodeError) as exc:
        raise _gdal_error(f"cannot read the file as {fmt}", exc) from exc
    names = [str(row[0]) for row in listed]
    if not names:
        raise UnreadableFile(f"the {fmt} file has no layer")
    if layer is not None:
        if layer not in names:
            raise BadRequest(
                f"the file has no layer {layer!r}; its layers: {', '.join(names)}",
                field="layer",
                layers=names,
            )
        chosen = [_layer(path, layer, options)]
    else:
        layers = [_layer(path, name, options) for name in names]
        if fmt == "KML":
            chosen = [lay for lay in layers if lay.features > 0] or layers[:1]
        elif len(layers) == 1 or path.is_dir():  # one layer, or one export's Shapefiles
            chosen = layers
        else:
            described = [
                {"name": lay.name, "features": lay.features, "geometry_type": lay.geometry_type}
                for lay in layers
            ]
            listing = ", ".join(f"{lay.name} ({lay.features})" for lay in layers)
            raise BadRequest(
                f"the {fmt} file has {len(layers)} layers; choose one with 'layer': {listing}",
                slug="layer-required",
                field="layer",
                layers=described,
            )
    source = Source(folder=folder, path=path, format=fmt, layers=chosen, open_options=options)
    source.fid_is_id = fmt == "GeoPackage"
    override = _parse_crs(source_crs) if source_crs else None
    for lay in chosen:
        if override is not None:
            lay.crs = override
        elif lay.crs is None and fmt == "Shapefile":
            source.warnings.append(
                "the Shapefile has no .prj: coordinates were read as EPSG:4326 "
                "(give source_crs if they are not)"
            )
    return source
