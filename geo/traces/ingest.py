"""GPS trace ingest: parse, clean and store an upload in one transaction.

Ingest runs in one transaction, so a failure stores nothing:

1. (the caller claims an ``Idempotency-Key`` in the same transaction first,
   see ``app/idempotent.py``, so a retry with the key gets the first answer);
2. a transaction-level advisory lock on (owner, SHA-256 of the bytes) and a
   look-up: the same bytes from the same owner answer 200 with the existing
   trace, and concurrent identical uploads queue on the lock, so exactly one
   trace is created.  A small upload (up to ``DIRECT_MAX_BYTES``) is read
   (step 3) before this, so that the lock, the look-up and the store (step 4,
   declining when the look-up answers, the settlement named is not live or the
   trace lies far from every settlement) go in one round trip
   (:func:`_store_at_once`); otherwise the lock, the look-up and the nearest
   settlement (for the far-away warning) go in one, and a read error waits for
   the look-up, so the answers are those of this order;
3. the upload's members (gzip/bzip2/zip or plain, see :mod:`geo.core.uploads`) are
   parsed by :class:`geo.traces.gpx.GpxReader` (its fast read first; anything
   unusual, an error included, reads the upload again exactly, the rows so far
   discarded) and cleaned point by point (:class:`Cleaner`).  A small upload's
   kept points stay in a list (up to ``DIRECT_MAX_ROWS`` rows and
   ``DIRECT_MAX_BYTES`` bytes); past that they stream with ``COPY`` into a
   temporary staging table - no per-point ``INSERT``, memory flat whatever
   the size;
4. one statement builds the trace row (lines, geodesic length via
   ``geography``), its segments and points from those rows (bound as binary
   arrays, or read from the staging table) and answers the new trace's
   summary; a small upload's original bytes go in the same statement, a
   large one's stream into ``trace_files`` with ``COPY``.

Visibility: ``private`` traces are seen by their owner and admins,
``community`` by any signed-in user, ``public`` by anyone.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import Connection, text

from geo.core import idempotency
from geo.core.db import (
    ACTOR_SQL,
    act_as,
    begin_is_ours,
    own_begin,
    own_end,
    pending_actor,
    set_statement_timeout,
)
from geo.core.errors import BadRequest, InvalidInput, MakaziError
from geo.core.privacy import Visibility
from geo.core.uploads import SpooledBody, members, sniff
from geo.layers.placement import NEAREST_QUERY, far_message, far_note
from geo.traces.binary import Binary, binary_array
from geo.traces.binary import register as register_binary
from geo.traces.cleaning import Cleaner, Dropped
from geo.traces.columns import NAT, TrackPoints, read_columns
from geo.traces.gpx import NUMERIC_FIELDS, BadPoint, Container, GpxReader, Point, Unusual
from geo.traces.reads import FILE_CHUNK, summary_json, trace_summary

__all__ = [
    "CONTENT_TYPES",
    "DIRECT_MAX_BYTES",
    "DIRECT_MAX_ROWS",
    "extensions_json",
    "ingest_trace",
    "IngestResult",
    "NoPoints",
    "TraceLimits",
]

#: An upload up to these sizes is stored from memory (rows bound as arrays, the
#: bytes as one parameter: no staging table, one statement); a larger one goes
#: through a temporary staging table with COPY, so memory stays flat.
DIRECT_MAX_ROWS = 20_000
DIRECT_MAX_BYTES = 4 * 1024 * 1024
CONTENT_TYPES = {
    "plain": "application/gpx+xml",
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "zip": "application/zip",
}


@dataclass(frozen=True)
class TraceLimits:
    """The limits and cleaning rules an ingest applies (from settings)."""

    max_points: int = 1_000_000
    max_decompressed_bytes: int = 250 * 1024 * 1024
    max_archive_members: int = 100
    max_xml_depth: int = 64
    max_speed_mps: float = 60.0
    max_hdop: float = 20.0
    ingest_timeout_ms: int = 600_000
    max_km_from_settlements: float = 0.0
    direct_max_rows: int = DIRECT_MAX_ROWS
    direct_max_bytes: int = DIRECT_MAX_BYTES
    columns: bool = True  # try the columnar read first (False: the reader's reads only)

    @classmethod
    def from_settings(cls, settings: Any) -> TraceLimits:
        """Read the ``MAKAZI_*`` trace settings."""
        return cls(
            max_points=settings.max_trace_points,
            max_decompressed_bytes=settings.max_decompressed_bytes,
            max_archive_members=settings.max_archive_members,
            max_xml_depth=settings.trace_max_xml_depth,
            max_speed_mps=settings.trace_max_speed_mps,
            max_hdop=settings.trace_max_hdop,
            ingest_timeout_ms=settings.trace_ingest_timeout_ms,
            max_km_from_settlements=settings.max_km_from_settlements,
            columns=settings.trace_columnar_read,
        )


# ----------------------------------------------------------------------- ingest
class NoPoints(InvalidInput):
    """Nothing usable in the file (a 422, with what was dropped)."""

    slug = "no-points"


@dataclass(frozen=True)
class IngestResult:
    """The stored trace: whether this upload created it (else the same bytes were
    there already), its id and its summary as JSON."""

    created: bool
    trace_id: int
    body: bytes


class _Stats:
    def __init__(self) -> None:
        self.points = 0
        self.route_points = 0
        self.waypoints = 0
        self.min_lon = math.inf
        self.min_lat = math.inf
        self.max_lon = -math.inf
        self.max_lat = -math.inf
        self.start: datetime | None = None
        self.end: datetime | None = None

    def add(self, point: Point) -> None:
        if point.kind == "trkpt":
            self.points += 1
            when = point.time
            if when is not None:
                if self.start is None or when < self.start:
                    self.start = when
                if self.end is None or when > self.end:
                    self.end = when
        elif point.kind == "rtept":
            self.route_points += 1
        else:
            self.waypoints += 1
        lon, lat = point.lon, point.lat
        if lon < self.min_lon:
            self.min_lon = lon
        if lon > self.max_lon:
            self.max_lon = lon
        if lat < self.min_lat:
            self.min_lat = lat
        if lat > self.max_lat:
            self.max_lat = lat

    def add_points(self, points: TrackPoints) -> None:
        """Count a segment's kept track points (see :meth:`add`)."""
        self.points += len(points)
        times = points.time_us[points.time_us != NAT]
        if len(times):
            start, end = _moment(int(times.min())), _moment(int(times.max()))
            if self.start is None or start < self.start:
                self.start = start
            if self.end is None or end > self.end:
                self.end = end
        self.min_lon = min(self.min_lon, float(points.lon.min()))
        self.max_lon = max(self.max_lon, float(points.lon.max()))
        self.min_lat = min(self.min_lat, float(points.lat.min()))
        self.max_lat = max(self.max_lat, float(points.lat.max()))

    @property
    def kept(self) -> int:
        return self.points + self.route_points + self.waypoints


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: EWKB geometry types with an SRID: point, line string.
_EWKB_POINT, _EWKB_LINE = 0x20000001, 0x20000002
#: PostgreSQL's timestamps count microseconds from 2000-01-01.
_PG_EPOCH_US = 946_684_800_000_000


def _moment(microseconds: int) -> datetime:
    """A UTC time from microseconds since 1970."""
    return _EPOCH + timedelta(microseconds=microseconds)


def point_rows(points: TrackPoints) -> list[tuple[Any, ...]]:
    """Kept track points as the rows the reader's path writes (see below)."""
    times = [None if t == NAT else _moment(t) for t in points.time_us.tolist()]
    eles = [None if e != e else e for e in points.ele.tolist()]
    return list(
        zip(
            repeat("trkpt"), points.seq.tolist(), repeat(points.track), repeat(points.segment),
            points.lon.tolist(), points.lat.tolist(), eles, times, repeat(None),
            points.extensions(),
        )
    )  # fmt: skip


#: Rows sent at a time by :func:`_binary_rows` (about 2 MB).
_BLOCK_ROWS = 16_384


def _binary_rows(points: TrackPoints, trace_id: int | None = None) -> Iterator[bytes]:
    """Kept track points as binary COPY rows, built in blocks by numpy: rows of
    ``trace_stage`` (:data:`_STAGE_TYPES`), or with ``trace_id`` rows of
    ``trace_points`` (:data:`_POINT_COLUMNS`: the point as EWKB).

    Rows with the same columns present share a layout (a NULL is a length of
    -1 and no data); the extensions are jsonb's binary form, padded with
    blanks to one width.
    """
    has_ele, has_time = ~np.isnan(points.ele), points.time_us != NAT
    has_hdop = ~np.isnan(points.hdop)
    shape = has_ele.astype(np.int8) | (has_time << 1) | (has_hdop << 2)
    ext = np.zeros(0, "S1")
    if has_hdop.any():
        ext = np.array([b'\x01{"hdop":%r}' % h for h in points.hdop.tolist()], "S")
        padding = ext.view(np.uint8).reshape(len(ext), ext.itemsize)
        padding[padding == 0] = ord(" ")
    names = [c for c, _ in _STAGE_TYPES] if trace_id is None else list(_POINT_COLUMNS)
    for key in np.unique(shape).tolist():
        rows = np.flatnonzero(shape == key)
        # column: its fields (name, type) and their values (arrays or one value)
        values: dict[str, list[tuple[str, str, Any]]] = {
            "trace_id": [("trace_id", ">i8", trace_id)],
            "kind": [("kind", "S5", b"trkpt")],
            "seq": [("seq", ">i4", points.seq)],
            "track": [("track", ">i4", points.track)],
            "segment": [("segment", ">i4", points.segment)],
            "lon": [("lon", ">f8", points.lon)],
            "lat": [("lat", ">f8", points.lat)],
            "geom": [
                ("order", "u1", 1),
                ("type", "<u4", _EWKB_POINT),
                ("srid", "<u4", 4326),
                ("x", "<f8", points.lon),
                ("y", "<f8", points.lat),
            ],
        }
        if key & 1:
            values["ele"] = [("ele", ">f8", points.ele)]
        if key & 2:
            values["time"] = [("time", ">i8", points.time_us - _PG_EPOCH_US)]
        if key & 4:
            values["extensions"] = [("extensions", ext.dtype.str, ext)]
        fields = [("n", ">i2")]
        for column in names:
            fields.append((f"{column}_n", ">i4"))
            fields += [(field, kind) for field, kind, _ in values.get(column, [])]
        for first in range(0, len(rows), _BLOCK_ROWS):
            at = rows[first : first + _BLOCK_ROWS]
            block = np.empty(len(at), dtype=fields)
            block["n"] = len(names)
            for column in names:
                parts = values.get(column, [])
                block[f"{column}_n"] = sum(np.dtype(kind).itemsize for _, kind, _ in parts) or -1
                for field, _, data in parts:
                    block[field] = data[at] if isinstance(data, np.ndarray) else data
            yield block.tobytes()


def _line_ewkb(coordinates: bytes | bytearray, n: int) -> bytes | None:
    """A segment's line as EWKB from its kept points' x, y (little-endian doubles), as
    ``ST_MakeLine`` of its points makes it: only with 2 points or more."""
    if n < 2:
        return None
    return struct.pack("<BIII", 1, _EWKB_LINE, 4326, n) + coordinates


# Parsed rows are (kind, seq, track, segment, lon, lat, ele, time, name,
# extensions): track/route/waypoint points, plus one row per track segment
# ("trkseg") and route ("rte") so that empty ones are stored too.  The
# extensions are JSON text; the binary COPY sends them as jsonb's binary form
# (a version byte, then the text), which the server reads while the client
# parses on, rather than psycopg encoding them to JSON a second time.
_STAGE_TYPES = (
    ("kind", "text"),
    ("seq", "integer"),
    ("track", "integer"),
    ("segment", "integer"),
    ("lon", "float8"),
    ("lat", "float8"),
    ("ele", "float8"),
    ("time", "timestamptz"),
    ("name", "text"),
    ("extensions", "jsonb"),
)
_STAGE_COLUMNS = ", ".join(column for column, _ in _STAGE_TYPES)

_STAGE = """
DROP TABLE IF EXISTS pg_temp.trace_stage;
CREATE TEMP TABLE trace_stage (
    kind text NOT NULL, seq integer, track integer, segment integer,
    lon double precision, lat double precision, ele double precision,
    time timestamptz, name text, extensions jsonb
) ON COMMIT DROP
"""
# Binary: the client formats no numbers or times as text, the server parses none.
_STAGE_COPY = f"COPY trace_stage ({_STAGE_COLUMNS}) FROM STDIN (FORMAT BINARY)"
_COPY_TYPES = [kind for _, kind in _STAGE_TYPES[:-1]] + ["bytea"]  # jsonb as built bytes
_JSONB_VERSION = b"\x01"

# Where the store statement reads the rows: the staging table (inlined, as if
# the statement named it) or one array parameter per column (unnested once).
_FROM_TABLE = f"NOT MATERIALIZED (SELECT {_STAGE_COLUMNS} FROM trace_stage)"  # noqa: S608
_ARRAY_PARAMETERS = ", ".join(
    f"CAST(%(stage_{column})b AS {kind}[])" for column, kind in _STAGE_TYPES
)
_FROM_ARRAYS = f"MATERIALIZED (SELECT * FROM unnest({_ARRAY_PARAMETERS}) AS s({_STAGE_COLUMNS}))"  # noqa: S608

# The trace row, from the track lines' union and length (``{id}``: an id taken before, or none).
_TRACE_ROW = """trace AS (
    INSERT INTO traces ({id}name, owner, visibility, settlement_id, content_sha256, points,
                        tracks, segments, routes, waypoints, length_m, duration_s, started_at,
                        ended_at, stats, dropped, warnings, geom)
    SELECT {id_value}%(name)s, %(owner)s, %(visibility)s, %(settlement_id)s, %(sha)s,
           %(points)s, %(tracks)s, %(segments)s, %(routes)s, %(waypoints)s,
           round(l.length_m::numeric, 2), %(duration_s)s, %(started_at)s, %(ended_at)s,
           CAST(%(stats)s AS jsonb)
               || jsonb_build_object('length_m', round(l.length_m::numeric, 2)),
           CAST(%(dropped)s AS jsonb), CAST(%(warnings)s AS jsonb), l.geom
    FROM track_lines l{where}
    RETURNING id, name, owner, visibility, settlement_id, version, stats, dropped, warnings,
              created_at, updated_at
)"""
_TRACE_NEW_ID = _TRACE_ROW.format(id="", id_value="", where="")

# One statement: lines per segment, the trace row, its segments and points (and,
# for a small upload, the original bytes); it answers the new trace's summary row.
_STORE = """
WITH stage AS {source}, lines AS (
    SELECT kind, track, segment, count(*) AS n,
           CASE WHEN count(*) > 1
                THEN ST_MakeLine(ST_SetSRID(ST_MakePoint(lon, lat), 4326) ORDER BY seq) END
               AS line
    FROM stage WHERE kind IN ('trkpt', 'rtept')
    GROUP BY kind, track, segment
), track_lines AS (
    SELECT ST_Multi(ST_Collect(line ORDER BY track, segment)) AS geom,
           coalesce(sum(ST_Length(line::geography)), 0) AS length_m
    FROM lines WHERE kind = 'trkpt' AND line IS NOT NULL
), {trace}, segments AS (
    INSERT INTO trace_segments (trace_id, kind, track, segment, points, geom)
    SELECT t.id, CASE c.kind WHEN 'trkseg' THEN 'track' ELSE 'route' END, c.track,
           c.segment, coalesce(l.n, 0), l.line
    FROM stage c
    CROSS JOIN trace t
    LEFT JOIN lines l
           ON l.kind = CASE c.kind WHEN 'trkseg' THEN 'trkpt' ELSE 'rtept' END
          AND l.track = c.track AND l.segment = c.segment
    WHERE c.kind IN ('trkseg', 'rte')
), points AS (
    INSERT INTO trace_points (trace_id, kind, seq, track, segment, geom, ele, time, name,
                              extensions)
    SELECT t.id, s.kind, s.seq, s.track, s.segment,
           ST_SetSRID(ST_MakePoint(s.lon, s.lat), 4326), s.ele, s.time, s.name, s.extensions
    FROM stage s CROSS JOIN trace t
    WHERE s.kind IN ('trkpt', 'rtept', 'wpt')
){file}
SELECT * FROM trace
"""
_FILE_FROM_PARAMETER = """, file AS (
    INSERT INTO trace_files (trace_id, content_type, size_bytes, content)
    SELECT t.id, %(content_type)s, %(size_bytes)s, %(content)s FROM trace t
)"""
_STORE_STAGED = _STORE.format(source=_FROM_TABLE, file="", trace=_TRACE_NEW_ID)

#: The columnar path's points went straight into ``trace_points`` (under a trace id
#: taken before): the trace row and its segments from the segments' lines, built
#: by the client and bound as arrays.
_POINT_COLUMNS = ("trace_id", "kind", "seq", "track", "segment", "geom", "ele", "time", "name",
                  "extensions")  # fmt: skip
_POINT_COPY = f"COPY trace_points ({', '.join(_POINT_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_SEGMENTS_TEMPLATE = """
WITH lines AS (
    SELECT track, segment, n, ST_GeomFromEWKB(line) AS line
    FROM unnest(CAST(%(seg_track)b AS integer[]), CAST(%(seg_segment)b AS integer[]),
                CAST(%(seg_points)b AS integer[]), CAST(%(seg_line)b AS bytea[]))
         AS s(track, segment, n, line)
), track_lines AS (
    SELECT ST_Multi(ST_Collect(line ORDER BY track, segment)) AS geom,
           coalesce(sum(ST_Length(line::geography)), 0) AS length_m
    FROM lines WHERE line IS NOT NULL
), {trace}, segments AS (
    INSERT INTO trace_segments (trace_id, kind, track, segment, points, geom)
    SELECT t.id, 'track', s.track, s.segment, s.n, s.line FROM lines s CROSS JOIN trace t
)
SELECT * FROM trace
"""
_STORE_SEGMENTS = _SEGMENTS_TEMPLATE.format(
    trace=_TRACE_ROW.format(id="id, ", id_value="%(id)s, ", where="")
)


@dataclass
class _Straight:
    """A large plain upload read in columns, its points copied straight into
    ``trace_points`` under ``trace_id``: what the store statement still needs."""

    trace_id: int
    reader: GpxReader
    stats: _Stats
    dropped: Dropped
    segments: list[tuple[int, int, int, bytes | None]]  # track, segment, points, line

    def params(self) -> dict[str, Any]:
        """The segments as array parameters of :data:`_STORE_SEGMENTS`, and the id."""
        columns = list(zip(*self.segments, strict=True)) if self.segments else [()] * 4
        names = ("seg_track", "seg_segment", "seg_points", "seg_line")
        # a column without a value (no segment has a line) goes as NULL: unnest pads it
        return {"id": self.trace_id} | {
            n: list(c) if any(v is not None for v in c) else None
            for n, c in zip(names, columns, strict=True)
        }


def _read_straight(conn: Connection, body: SpooledBody, limits: TraceLimits) -> _Straight | None:
    """Read a large upload in columns, copying its points into ``trace_points`` as they
    come (the server stores them while the client parses on); ``None`` (and nothing
    left behind) when the columnar read declines it."""
    raw = _driver(conn)
    trace_id = int(
        conn.execute(text("SELECT nextval(pg_get_serial_sequence('traces', 'id'))")).scalar_one()
    )
    set_statement_timeout(conn, limits.ingest_timeout_ms)
    # each segment's kept points: how many, and their x, y for its line
    lines: dict[tuple[int, int], tuple[list[int], bytearray]] = {}
    dropped = Dropped()
    conn.execute(text("SAVEPOINT trace_columns"))
    try:
        with raw.cursor() as cursor, cursor.copy(_POINT_COPY) as copy:
            copy.write(_BINARY_COPY_HEADER)

            def segment(track: int, segment: int) -> None:
                lines[(track, segment)] = ([0], bytearray())

            def points(kept: TrackPoints) -> None:
                for block in _binary_rows(kept, trace_id):
                    copy.write(block)
                count, coordinates = lines[(kept.track, kept.segment)]
                count[0] += len(kept)
                xy = np.empty((len(kept), 2), "<f8")
                xy[:, 0], xy[:, 1] = kept.lon, kept.lat
                coordinates += xy.tobytes()

            reader, stats = _parse_columns(body, limits, dropped, lambda row: None, points,
                                           on_segment=segment)  # fmt: skip
            copy.write(_BINARY_COPY_TRAILER)
    except Unusual:
        declined = True
    else:
        declined = False
    if declined:  # outside the handler (its traceback holds the parse's frames)
        conn.execute(text("ROLLBACK TO SAVEPOINT trace_columns"))
        return None
    conn.execute(text("RELEASE SAVEPOINT trace_columns"))
    segments = [
        (track, segment, count[0], _line_ewkb(coordinates, count[0]))
        for (track, segment), (count, coordinates) in lines.items()
    ]
    return _Straight(trace_id, reader, stats, dropped, segments)


_STORE_DIRECT = _STORE.format(source=_FROM_ARRAYS, file=_FILE_FROM_PARAMETER, trace=_TRACE_NEW_ID)

# The lock on (owner, bytes) and the look-up of a live trace with those bytes.
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 6))"
_FIND = "SELECT id FROM traces WHERE owner = %s AND content_sha256 = %s AND deleted_at IS NULL"
#: The direct store, sent with the lock and the look-up: it stores nothing when the
#: bytes are there already, the settlement named is not live, or the trace lies far
#: from every settlement (``far_m``; then the caller stores it with its warning).
_STORE_UNLESS = _STORE.format(
    source=_FROM_ARRAYS,
    file=_FILE_FROM_PARAMETER,
    trace=_TRACE_ROW.format(
        id="",
        id_value="",
        where=f"""
    WHERE NOT EXISTS (SELECT FROM traces
                      WHERE owner = %(owner)s AND content_sha256 = %(sha)s AND deleted_at IS NULL)
      AND (CAST(%(settlement_id)s AS bigint) IS NULL
           OR EXISTS (SELECT FROM settlements
                      WHERE id = %(settlement_id)s AND deleted_at IS NULL))
      AND NOT EXISTS (SELECT FROM ({NEAREST_QUERY}) n WHERE n.distance_m > %(far_m)s)""",  # noqa: S608
    ),
)


def _driver(conn: Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under ``conn`` (same transaction), for COPY; a deferred
    actor (:meth:`geo.core.db.Database.begin`) is named first."""
    actor = pending_actor(conn)
    if actor:
        act_as(conn, actor)
    raw = conn.connection.driver_connection
    if not isinstance(raw, psycopg.Connection):
        raise TypeError("trace ingest needs the psycopg 3 driver")
    return raw


def _describe(dropped: Dropped) -> str:
    parts = [f"{g['count']} {g['kind']} {g['reason']}" for g in dropped.as_list()[:5]]
    return "; ".join(parts)


class _Rows(contextlib.ExitStack):
    """Where parsed rows go: a list up to ``max_rows``, then the staging table.

    Use as a context manager; past ``max_rows`` the rows so far and every
    later one stream into ``trace_stage`` (created then) through one COPY,
    which :meth:`finish` (or leaving the context) ends.  A staged ingest runs
    under ``timeout_ms`` as its statement timeout; a direct one keeps the
    ordinary timeout (its one statement handles at most ``max_rows`` rows).
    """

    def __init__(self, conn: Connection, *, max_rows: int, timeout_ms: int) -> None:
        super().__init__()
        self.conn = conn
        self.max_rows = max_rows
        self.timeout_ms = timeout_ms
        self.rows: list[tuple[Any, ...]] = []
        self.points: list[TrackPoints] = []  # the columnar read's kept points, as they came
        self.count = 0  # rows and points taken
        self.staged = False
        self._copy: psycopg.Copy | None = None
        self._row_by_row = False  # whether psycopg wrote rows (then it ends the COPY)

    def write(self, row: tuple[Any, ...]) -> None:
        """Take one row."""
        if self._copy is not None:
            self._send(row)
            return
        self.rows.append(row)
        self.count += 1
        if self.count > self.max_rows:
            self.spill()

    def spill(self) -> None:
        """Move to the staging table: create it, open the COPY, send the rows so far."""
        if self.staged:
            return
        # The COPY lasts as long as the parse: a 1M-point upload outlives the
        # ordinary statement timeout, so a staged ingest has its own (still bounded) one.
        set_statement_timeout(self.conn, self.timeout_ms)
        for statement in _STAGE.split(";"):
            self.conn.execute(text(statement))
        self._open_copy()
        for row in self.rows:
            self._send(row)
        assert self._copy is not None
        for points in self.points:
            for block in _binary_rows(points):
                self._copy.write(block)
        self.rows, self.points = [], []
        self.staged = True

    def write_points(self, points: TrackPoints) -> None:
        """Take a segment's kept track points: as they are while they fit in memory, else
        in binary blocks into the COPY."""
        if self._copy is None and self.count + len(points) <= self.max_rows:
            self.points.append(points)
            self.count += len(points)
            return
        self.spill()
        assert self._copy is not None
        for block in _binary_rows(points):
            self._copy.write(block)

    def _open_copy(self) -> None:
        cursor = self.enter_context(_driver(self.conn).cursor())
        copy = self.enter_context(cursor.copy(_STAGE_COPY))
        copy.set_types(_COPY_TYPES)
        copy.write(_BINARY_COPY_HEADER)  # ours, so that blocks and rows can follow in any order
        self._copy = copy
        self._row_by_row = False

    def _end_copy(self) -> None:
        if self._copy is not None and not self._row_by_row:
            self._copy.write(_BINARY_COPY_TRAILER)
        self._copy = None
        self.close()

    def restart(self) -> None:
        """Forget every row taken so far (the staging table, if any, stays, emptied)."""
        self.rows, self.points, self.count = [], [], 0
        if self.staged:
            self._end_copy()
            self.conn.execute(text("TRUNCATE pg_temp.trace_stage"))
            self._open_copy()

    def _send(self, row: tuple[Any, ...]) -> None:
        """One row into the COPY, its extensions (the last column) as binary jsonb."""
        assert self._copy is not None
        extensions = row[-1]
        if extensions is not None:
            row = (*row[:-1], _JSONB_VERSION + extensions.encode())
        self._copy.write_row(row)
        self._row_by_row = True

    def finish(self) -> None:
        """End the COPY, if there is one (the rows are then in the table)."""
        self._end_copy()

    def arrays(self) -> dict[str, Any]:
        """The rows and points taken as one array parameter per column (``stage_<column>``).

        A column without any value (no names, no extensions...) is sent as
        NULL, which ``unnest`` pads with NULLs like a short array: less to send.
        The columnar read's points (beside its segments' rows) go in binary,
        built by numpy (:func:`_column_arrays`); other rows as lists.
        """
        if self.points and all(row[0] == "trkseg" for row in self.rows):
            return _column_arrays(self.rows, self.points)
        for points in self.points:
            self.rows.extend(point_rows(points))
        self.points = []
        columns = list(zip(*self.rows, strict=True)) if self.rows else [()] * len(_STAGE_TYPES)
        return {
            f"stage_{column}": list(values) if any(v is not None for v in values) else None
            for (column, _), values in zip(_STAGE_TYPES, columns, strict=True)
        }


def _column_arrays(
    segments: list[tuple[Any, ...]], parts: list[TrackPoints]
) -> dict[str, Binary | None]:
    """Segment rows and kept track points as the store statement's array parameters
    (:meth:`_Rows.arrays`), in PostgreSQL's binary form: the segments first, then the
    points."""
    k, m = len(segments), sum(len(p) for p in parts)
    point = np.concatenate((np.zeros(k, bool), np.ones(m, bool)))

    def joined(name: str, dtype: str) -> npt.NDArray[Any]:
        values = np.concatenate([getattr(p, name) for p in parts])
        return np.concatenate((np.zeros(k, dtype), values.astype(dtype)))

    def where(present: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        return np.concatenate((np.zeros(k, bool), present))

    every = {f: np.concatenate([getattr(p, f) for p in parts]) for f in ("ele", "time_us", "hdop")}
    lengths = [len(p) for p in parts]
    track = [row[2] for row in segments] + np.repeat([p.track for p in parts], lengths).tolist()
    segment = [row[3] for row in segments] + np.repeat([p.segment for p in parts], lengths).tolist()
    extensions = [_JSONB_VERSION + e.encode() if e else b"" for p in parts for e in p.extensions()]
    columns: dict[str, tuple[npt.NDArray[Any], npt.NDArray[np.bool_] | None, str]] = {
        "kind": (np.repeat(np.array([b"trkseg", b"trkpt"]), [k, m]), None, "text"),
        "seq": (joined("seq", "i4"), point, "int4"),
        "track": (np.array(track), None, "int4"),
        "segment": (np.array(segment), None, "int4"),
        "lon": (joined("lon", "f8"), point, "float8"),
        "lat": (joined("lat", "f8"), point, "float8"),
        "ele": (joined("ele", "f8"), where(~np.isnan(every["ele"])), "float8"),
        "time": (
            joined("time_us", "i8") - _PG_EPOCH_US,
            where(every["time_us"] != NAT),
            "timestamptz",
        ),
        "extensions": (
            np.concatenate((np.zeros(k, "S1"), np.array(extensions, "S"))),
            where(~np.isnan(every["hdop"])),
            "jsonb",
        ),
    }
    arrays: dict[str, Binary | None] = {"stage_name": None}
    for column, (values, present, element) in columns.items():
        some = present is None or bool(present.any())
        arrays[f"stage_{column}"] = binary_array(values, present, element) if some else None
    return arrays


def extensions_json(ext: dict[str, Any]) -> str:
    """A point's extensions as compact JSON.

    The usual case (GPX's own numeric children such as ``hdop``: safe names,
    finite floats) is written directly, as ``json.dumps`` would write it (a
    float's ``repr``); anything else goes through ``json.dumps``.

    >>> extensions_json({"hdop": 4.0, "sat": 7.0}), extensions_json({"fix": "3d"})
    ('{"hdop":4.0,"sat":7.0}', '{"fix":"3d"}')
    """
    parts = []
    for key, value in ext.items():
        if type(value) is not float or key not in NUMERIC_FIELDS:
            return json.dumps(ext, separators=(",", ":"))
        parts.append(f'"{key}":{value!r}')
    return "{" + ",".join(parts) + "}"


def _parse(
    body: SpooledBody,
    limits: TraceLimits,
    dropped: Dropped,
    write: Callable[[tuple[Any, ...]], None],
    *,
    fast: bool = False,
) -> tuple[GpxReader, _Stats]:
    """Parse and clean every member of the upload, handing each row to ``write``.

    With ``fast``, :class:`Unusual` may come instead of an error (or before
    any): the rows handed so far are then to be discarded, see :func:`_read`.
    """
    reader = GpxReader(max_points=limits.max_points, max_depth=limits.max_xml_depth)
    stats = _Stats()
    cleaner = Cleaner(max_speed_mps=limits.max_speed_mps, max_hdop=limits.max_hdop, dropped=dropped)

    def stage(point: Point) -> None:
        stats.add(point)
        ext = point.extensions
        write(
            (
                point.kind,
                point.index,
                point.track,
                point.segment,
                point.lon,
                point.lat,
                point.ele,
                point.time,
                point.name,
                extensions_json(ext) if ext else None,
            )
        )

    body.file.seek(0)
    contents = members(
        body.file,
        limit=limits.max_decompressed_bytes,
        max_members=limits.max_archive_members,
    )
    for member in contents:
        try:
            for item in reader.read(member.stream, member=member.name, fast=fast):
                if type(item) is Point:
                    if item.kind == "trkpt":
                        for kept in cleaner.push(item):
                            stage(kept)
                    else:
                        stage(item)
                elif type(item) is BadPoint:
                    dropped.add(
                        item.kind,
                        item.reason,
                        index=item.index,
                        track=item.track,
                        segment=item.segment,
                        value=item.value,
                    )
                elif type(item) is Container:
                    cleaner.end_segment()
                    if item.kind == "trkseg":
                        write(("trkseg", None, item.track, item.segment) + (None,) * 6)
                    elif item.kind == "rte":
                        write(("rte", None, item.track, 0) + (None,) * 6)
        except (BadRequest, InvalidInput):
            # A parse error may hide bytes past the size limit (a bomb of junk):
            # then the size limit is the answer, not the XML error.
            member.stream.drain()
            for rest in contents:
                rest.stream.drain()
            raise
        cleaner.end_segment()
    return reader, stats


def _parse_columns(
    body: SpooledBody,
    limits: TraceLimits,
    dropped: Dropped,
    write: Callable[[tuple[Any, ...]], None],
    write_points: Callable[[TrackPoints], None],
    *,
    on_segment: Callable[[int, int], None] | None = None,
) -> tuple[GpxReader, _Stats]:
    """The columnar read of a plain track file (:mod:`geo.traces.columns`), or :class:`Unusual`.

    Segment rows go to ``write`` (or their start to ``on_segment``), kept track
    points to ``write_points``.
    """
    reader = GpxReader(max_points=limits.max_points, max_depth=limits.max_xml_depth)
    stats = _Stats()
    body.file.seek(0)
    if not limits.columns or sniff(body.file) == "zip":
        raise Unusual("not read in columns")

    def segment(track: int, segment: int) -> None:
        write(("trkseg", None, track, segment) + (None,) * 6)

    def points(kept: TrackPoints) -> None:
        stats.add_points(kept)
        write_points(kept)

    try:
        for member in members(body.file, limit=limits.max_decompressed_bytes):
            read_columns(
                member.stream,
                reader,
                dropped,
                max_speed_mps=limits.max_speed_mps,
                max_hdop=limits.max_hdop,
                on_segment=on_segment or segment,
                on_points=points,
            )
    except Unusual:
        raise
    except Exception as exc:  # any error: the reader's reads answer it exactly
        raise Unusual(str(exc)) from exc
    return reader, stats


def _read(
    body: SpooledBody, limits: TraceLimits, rows: _Rows, *, columns: bool = True
) -> tuple[GpxReader, _Stats, Dropped]:
    """Parse and clean the upload into ``rows``: the columnar read (unless declined
    already), the fast read, or else the exact one."""
    for way in ("columns", "fast") if columns else ("fast",):
        dropped = Dropped()
        try:
            if way == "columns":
                reader, stats = _parse_columns(body, limits, dropped, rows.write, rows.write_points)
            else:
                reader, stats = _parse(body, limits, dropped, rows.write, fast=True)
            return reader, stats, dropped
        except Unusual:
            pass
        # outside the handler: the exception's traceback holds the failed read's frames
        # (a parser and partial document), which must be freed before reading again
        rows.restart()
    dropped = Dropped()
    dropped = Dropped()
    reader, stats = _parse(body, limits, dropped, rows.write)
    return reader, stats, dropped


def fingerprint(
    body: SpooledBody, name: str | None, visibility: str, settlement: int | None
) -> str:
    """What makes two uploads "the same request" for an ``Idempotency-Key``."""
    label = (name or "").strip()
    return idempotency.request_hash(body.sha256, label, visibility, str(settlement or ""))


def ingest_trace(
    conn: Connection,
    *,
    owner: str,
    body: SpooledBody,
    name: str | None,
    visibility: str,
    settlement_id: int | None,
    limits: TraceLimits,
    last: bool = False,
) -> IngestResult:
    """Store an uploaded GPX (plain, gzip, bzip2 or zip) as a trace; see the module doc.

    ``last``: the caller writes nothing after the trace in this transaction, so a
    small upload stored in one round trip (:func:`_store_at_once`) may commit the
    transaction in that same round trip (when it also opened it).

    Raises
    ------
    BadRequest
        For bytes that are not GPX (with line/column) or a broken archive.
    InvalidInput
        For a file without a usable point (:class:`NoPoints`) or a bad parameter.
    TooLarge
        Past the size, decompression or point limit.
    """
    if visibility not in set(Visibility):
        raise InvalidInput(f"visibility must be one of {', '.join(Visibility)}")
    if name is not None and not name.strip():
        name = None

    def trace_params() -> dict[str, Any]:
        """The trace row's parameters, once the upload is read."""
        return _trace_params(
            owner=owner,
            body=body,
            name=name,
            visibility=visibility,
            settlement_id=settlement_id,
            reader=reader,
            stats=stats,
            dropped=dropped,
        )

    with _Rows(conn, max_rows=limits.direct_max_rows, timeout_ms=limits.ingest_timeout_ms) as rows:
        if body.size > limits.direct_max_bytes:
            # a large upload: look for the same bytes before reading them
            existing, _ = _lock_and_find(conn, owner=owner, sha256=body.sha256)
            if existing is not None:
                return IngestResult(False, existing, summary_json(conn, existing))
            _check_settlement(conn, settlement_id)
            straight = _read_straight(conn, body, limits) if limits.columns else None
            if straight is None:
                rows.spill()
                reader, stats, dropped = _read(body, limits, rows, columns=False)
                rows.finish()
            else:
                reader, stats, dropped = straight.reader, straight.stats, straight.dropped
            note = None
            if stats.kept:
                note = far_note(
                    conn, _box(stats), what="trace", max_km=limits.max_km_from_settlements
                )
        else:
            straight = None
            # a small one is read first, so that the look-up and the placement go in
            # one round trip; an error waits for the look-up (the same bytes stored
            # before still answer 200, as they did)
            failure: MakaziError | None = None
            try:
                reader, stats, dropped = _read(body, limits, rows)
            except MakaziError as exc:
                failure = exc
            rows.finish()
            if failure is None and stats.kept and not rows.staged:
                done = _store_at_once(
                    conn,
                    trace_params() | _file_params(body) | rows.arrays(),
                    owner=owner,
                    sha256=body.sha256,
                    area=_box(stats),
                    max_km=limits.max_km_from_settlements,
                    last=last,
                )
                if done is not None:
                    return done
            area = _box(stats) if failure is None and stats.kept else None
            existing, nearest = _lock_and_find(
                conn,
                owner=owner,
                sha256=body.sha256,
                near=area,
                max_km=limits.max_km_from_settlements,
            )
            if existing is not None:
                return IngestResult(False, existing, summary_json(conn, existing))
            _check_settlement(conn, settlement_id)
            if failure is not None:
                raise failure
            note = (
                None
                if nearest is None
                else far_message(*nearest, what="trace", max_km=limits.max_km_from_settlements)
            )
    if stats.kept == 0:
        if reader.points_seen == 0:
            raise NoPoints("the file has no track point, route point or waypoint")
        raise NoPoints(
            f"no point with valid coordinates: {_describe(dropped)}",
            dropped=dropped.as_list(),
        )
    if note is not None:
        reader.warn(note)
    params = trace_params()
    content_type = params["content_type"]
    if straight is not None:
        row = _run_store(conn, _STORE_SEGMENTS, {**params, **straight.params()})
        _store_file(conn, int(row.id), body, content_type)
    elif rows.staged:
        row = _run_store(conn, _STORE_STAGED, params)
        conn.execute(text("DROP TABLE pg_temp.trace_stage"))
        _store_file(conn, int(row.id), body, content_type)
    else:
        row = _run_store(conn, _STORE_DIRECT, params | _file_params(body) | rows.arrays())
    return IngestResult(True, int(row.id), json.dumps(trace_summary(row)).encode())


def _file_params(body: SpooledBody) -> dict[str, Any]:
    """The original bytes as the direct store's parameters (a small upload's)."""
    body.file.seek(0)
    return {"size_bytes": body.size, "content": body.file.read()}


def _store_at_once(
    conn: Connection,
    params: dict[str, Any],
    *,
    owner: str,
    sha256: str,
    area: bytes,
    max_km: float,
    last: bool = False,
) -> IngestResult | None:
    """A small upload read without error: lock, look-up and store in one round trip.

    :data:`_STORE_UNLESS` stores the trace unless the look-up would answer (the
    same bytes: then the existing trace is the answer), the settlement named is
    not live or the trace lies far from every settlement (then ``None``: the
    caller takes the ordinary road, which answers those).  The store's snapshot
    is taken after the lock, as the look-up's is.

    When nothing was sent in the transaction yet, the same round trip opens it
    (:func:`geo.core.db.own_begin`: psycopg's own ``BEGIN`` would wait for its
    answer first) and, when the caller writes nothing after (``last``), commits
    it: the answer then waits for the commit as before, a 201 still means stored.
    A declined store committed nothing; the ordinary road runs in the next
    transaction, its actor named again.
    """
    actor = pending_actor(conn)  # named in the same round trip
    own_begin(conn)  # where it can: the BEGIN then goes in this round trip
    raw = _driver(conn)
    begin = begin_is_ours(raw)
    commit = begin and last
    register_binary(raw.adapters)
    far_m = max_km * 1000 if max_km > 0 else None
    with (
        raw.cursor() as lock,
        raw.cursor() as find,
        raw.cursor(row_factory=namedtuple_row) as store,
    ):
        with raw.pipeline():  # its end sends them and fetches every result: one round trip
            if begin:
                lock.execute("BEGIN", prepare=False)
            if actor:
                lock.execute(ACTOR_SQL, (actor,))
            lock.execute(_LOCK, (f"trace/{owner}/{sha256}",))
            find.execute(_FIND, (owner, sha256))
            store.execute(_STORE_UNLESS, params | {"wkb": area, "flip": False, "far_m": far_m})
            if commit:
                lock.execute("COMMIT", prepare=False)
        existing = find.fetchone()
        row: Any = store.fetchone()
    if commit:
        own_end(raw)
    if existing is not None:
        return IngestResult(False, int(existing[0]), summary_json(conn, int(existing[0])))
    if row is None:
        if commit and actor:
            act_as(conn, actor)  # the ordinary road's transaction is a new one
        return None
    return IngestResult(True, int(row.id), json.dumps(trace_summary(row)).encode())


def _box(stats: _Stats) -> bytes:
    """The kept points' bounding box as a WKB polygon (built directly: no geometry library)."""
    x0, y0, x1, y1 = stats.min_lon, stats.min_lat, stats.max_lon, stats.max_lat
    ring = (x1, y0, x1, y1, x0, y1, x0, y0, x1, y0)
    return struct.pack("<BIII10d", 1, 3, 1, 5, *ring)


def _lock_and_find(
    conn: Connection, *, owner: str, sha256: str, near: bytes | None = None, max_km: float = 0.0
) -> tuple[int | None, tuple[str, float | None] | None]:
    """Lock (owner, bytes) for the transaction; the live trace with those bytes, if any,
    and the settlement nearest to ``near`` (name, metres) when given and ``max_km`` > 0.

    Two statements, so that the look-up's snapshot is taken once the lock is
    held (it sees what an earlier holder committed), and the placement's, sent
    in one round trip.
    """
    raw = _driver(conn)
    nearest = None
    with raw.cursor() as lock, raw.cursor() as find, raw.cursor() as place:
        with raw.pipeline():  # its end sends them and fetches every result: one round trip
            lock.execute(_LOCK, (f"trace/{owner}/{sha256}",))
            find.execute(_FIND, (owner, sha256))
            if near is not None and max_km > 0:
                place.execute(NEAREST_QUERY, {"wkb": near, "flip": False})
        row = find.fetchone()
        if near is not None and max_km > 0:
            nearest = place.fetchone()
    return (None if row is None else int(row[0])), (None if nearest is None else tuple(nearest))


def _check_settlement(conn: Connection, settlement_id: int | None) -> None:
    if settlement_id is not None:
        live = conn.execute(
            text("SELECT 1 FROM settlements WHERE id = :i AND deleted_at IS NULL"),
            {"i": settlement_id},
        ).first()
        if live is None:
            raise InvalidInput(
                f"settlement_id {settlement_id} does not exist", field="settlement_id"
            )


def _run_store(conn: Connection, statement: str, params: dict[str, Any]) -> Any:
    """Run a store statement on the driver connection; its one row (the new trace).

    psycopg directly rather than SQLAlchemy: the array parameters go in binary
    (``%(…)b``), several times cheaper to send than their text form.
    """
    raw = _driver(conn)
    register_binary(raw.adapters)
    with raw.cursor(row_factory=namedtuple_row) as cursor:
        cursor.execute(statement, params)
        return cursor.fetchone()


def _trace_params(
    *,
    owner: str,
    body: SpooledBody,
    name: str | None,
    visibility: str,
    settlement_id: int | None,
    reader: GpxReader,
    stats: _Stats,
    dropped: Dropped,
) -> dict[str, Any]:
    """The store statements' parameters for the trace row (stats as JSON too), and the
    upload's ``content_type``."""
    body.file.seek(0)
    content_type = CONTENT_TYPES[sniff(body.file)]
    duration = (stats.end - stats.start).total_seconds() if stats.start and stats.end else None
    bbox = [stats.min_lon, stats.min_lat, stats.max_lon, stats.max_lat] if stats.kept else None
    stats_json = {
        "points": stats.points,
        "tracks": reader.tracks,
        "segments": reader.segments,
        "routes": reader.routes,
        "waypoints": stats.waypoints,
        "route_points": stats.route_points,
        "duration_s": duration,
        "started_at": stats.start.isoformat() if stats.start else None,
        "ended_at": stats.end.isoformat() if stats.end else None,
        "bbox": bbox,
        "gpx_version": reader.versions[0] if reader.versions else None,
        "size_bytes": body.size,
        "content_type": content_type,
    }
    return {
        "name": (name or f"GPS trace {body.sha256[:8]}")[:300],
        "owner": owner,
        "visibility": visibility,
        "settlement_id": settlement_id,
        "sha": body.sha256,
        "points": stats.points,
        "tracks": reader.tracks,
        "segments": reader.segments,
        "routes": reader.routes,
        "waypoints": stats.waypoints,
        "duration_s": duration,
        "started_at": stats.start,
        "ended_at": stats.end,
        "stats": json.dumps(stats_json),
        "dropped": json.dumps(dropped.as_list()),
        "warnings": json.dumps(reader.warnings),
        "content_type": content_type,
    }


#: PostgreSQL's binary COPY framing: signature, flags and header extension; end of data.
_BINARY_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_BINARY_COPY_TRAILER = struct.pack("!h", -1)


def _store_file(conn: Connection, trace_id: int, body: SpooledBody, content_type: str) -> None:
    """Stream the original bytes into ``trace_files`` (binary COPY of one row, in chunks).

    Binary, so the bytes go as they are: half the traffic of hex text and no
    decoding on the server.
    """
    raw = _driver(conn)
    label = content_type.encode()
    body.file.seek(0)
    with (
        raw.cursor() as cursor,
        cursor.copy(
            "COPY trace_files (trace_id, content_type, size_bytes, content) FROM STDIN "
            "(FORMAT BINARY)"
        ) as copy,
    ):
        copy.write(
            _BINARY_COPY_HEADER
            + struct.pack("!hiq", 4, 8, trace_id)
            + struct.pack("!i", len(label))
            + label
            + struct.pack("!iqi", 8, body.size, body.size)
        )
        while chunk := body.file.read(FILE_CHUNK):
            copy.write(chunk)
        copy.write(_BINARY_COPY_TRAILER)
