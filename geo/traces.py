"""GPS traces: ingest (parse, clean, store), read, visibility, edits, boundaries.

Ingest runs in one transaction, so a failure stores nothing:

1. ``Idempotency-Key`` claimed (a retry with the key gets the first answer);
2. a transaction-level advisory lock on (owner, SHA-256 of the bytes) and a
   look-up: the same bytes from the same owner answer 200 with the existing
   trace, and concurrent identical uploads queue on the lock, so exactly one
   trace is created;
3. the upload's members (gzip/bzip2/zip or plain, see :mod:`geo.uploads`) are
   parsed by :class:`geo.gpx.GpxReader` and cleaned point by point
   (:class:`Cleaner`).  A small upload's kept points stay in a list (up to
   ``DIRECT_MAX_ROWS`` rows and ``DIRECT_MAX_BYTES`` bytes); past that they
   stream with ``COPY`` into a temporary staging table - no per-point
   ``INSERT``, memory flat whatever the size;
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import shapely
from psycopg.rows import namedtuple_row
from sqlalchemy import Connection, text

from geo import idempotency
from geo.auth import Principal
from geo.errors import Forbidden, InvalidInput, NotFound, PreconditionFailed
from geo.gpx import BadPoint, Container, GpxReader, Point
from geo.perimeter import OpenWalk, TooFewPoints, boundary_polygon
from geo.uploads import SpooledBody, members, sniff

__all__ = [
    "VISIBILITIES",
    "Cleaner",
    "Dropped",
    "IngestResult",
    "NoPoints",
    "TraceLimits",
    "delete_trace",
    "get_trace",
    "ingest_trace",
    "list_traces",
    "patch_trace",
    "trace_boundary",
    "trace_file",
    "trace_file_chunks",
    "trace_geojson_chunks",
]

VISIBILITIES = ("private", "community", "public")
SCOPE = "POST /traces"
UTM_37S = 32737
EARTH_RADIUS_M = 6_371_008.8
FILE_CHUNK = 4 * 1024 * 1024
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
    direct_max_rows: int = DIRECT_MAX_ROWS
    direct_max_bytes: int = DIRECT_MAX_BYTES

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
        )


# --------------------------------------------------------------------- cleaning
class Dropped:
    """Points left out, grouped by (kind, reason), with the first example."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str], dict[str, Any]] = {}

    def add(
        self,
        kind: str,
        reason: str,
        *,
        index: int,
        track: int | None,
        segment: int | None,
        value: str | None = None,
    ) -> None:
        """Count one dropped point."""
        group = self.groups.get((kind, reason))
        if group is None:
            first: dict[str, Any] = {"index": index, "track": track, "segment": segment}
            if value is not None:
                first["value"] = value[:80]
            self.groups[(kind, reason)] = {
                "kind": kind,
                "reason": reason,
                "count": 1,
                "first": first,
            }
        else:
            group["count"] += 1

    def total(self, kind: str | None = None) -> int:
        """How many points were dropped (of ``kind``, or all)."""
        return sum(g["count"] for (k, _), g in self.groups.items() if kind is None or k == kind)

    def as_list(self) -> list[dict[str, Any]]:
        """``[{kind, reason, count, first}]``, largest group first."""
        return sorted(self.groups.values(), key=lambda g: (-g["count"], g["kind"], g["reason"]))


#: Safety factor on the speed pre-check's bound, against rounding.
_BOUND_MARGIN = 0.999


def _distance_m(a: Point, b: Point) -> float:
    """Great-circle distance (haversine): only used to judge speeds."""
    lat1, lat2 = math.radians(a.lat), math.radians(b.lat)
    dlat = lat2 - lat1
    dlon = math.radians(b.lon - a.lon)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


class Cleaner:
    """Clean the track points of one segment at a time, with one point of look-ahead.

    Dropped: a point whose reported hdop is over ``max_hdop``; a point equal
    to the previous one (same position and time); an isolated spike (reached
    and left at more than ``max_speed_mps`` while its neighbours are within
    reach of each other); and a last point reached at an impossible speed.
    A sustained jump (the phone really moved, e.g. after a gap) is kept.
    Points without time are never judged on speed.
    """

    def __init__(self, *, max_speed_mps: float, max_hdop: float, dropped: Dropped) -> None:
        self.max_speed = max_speed_mps
        self.max_hdop = max_hdop
        self.dropped = dropped
        self.speed_reason = f"speed jump over {max_speed_mps:g} m/s"
        self.hdop_reason = f"hdop over {max_hdop:g}"
        self.prev: Point | None = None
        self.cand: Point | None = None

    def _drop(self, point: Point, reason: str) -> None:
        self.dropped.add(
            point.kind, reason, index=point.index, track=point.track, segment=point.segment
        )

    def _fast(self, a: Point | None, b: Point) -> bool:
        if a is None or a.epoch is None or b.epoch is None:
            return False
        seconds = b.epoch - a.epoch
        if seconds <= 0:
            return False
        # Cheap first: the great circle is never longer than R * hypot(dlat, dlon)
        # (radians), so well under that bound no haversine is needed.
        reach = self.max_speed * seconds * _BOUND_MARGIN
        if EARTH_RADIUS_M * math.radians(abs(b.lat - a.lat) + abs(b.lon - a.lon)) <= reach:
            return False
        return _distance_m(a, b) / seconds > self.max_speed

    def push(self, point: Point) -> Iterator[Point]:
        """Take the next point; yield the points now known to be kept."""
        if point.hdop is not None and point.hdop > self.max_hdop:
            self._drop(point, self.hdop_reason)
            return
        last = self.cand or self.prev
        if (
            last is not None
            and last.lat == point.lat
            and last.lon == point.lon
            and last.epoch == point.epoch
        ):
            self._drop(point, "duplicate of the previous point")
            return
        cand = self.cand
        if cand is not None:
            self.cand = None
            if self._fast(cand, point) and not self._fast(self.prev, point):
                self._drop(cand, self.speed_reason)
            else:
                self.prev = cand
                yield cand
        if self._fast(self.prev, point):
            self.cand = point
        else:
            self.prev = point
            yield point

    def end_segment(self) -> None:
        """The segment ended: a pending jump has nothing after it, so it is dropped."""
        if self.cand is not None:
            self._drop(self.cand, self.speed_reason)
        self.cand = None
        self.prev = None


# ----------------------------------------------------------------------- ingest
class NoPoints(InvalidInput):
    """Nothing usable in the file (a 422, with what was dropped)."""

    slug = "no-points"


@dataclass
class IngestResult:
    """What to answer: status (201 new, 200 existing or replayed) and JSON body."""

    status: int
    trace_id: int
    body: bytes
    replayed: bool = False


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

    @property
    def kept(self) -> int:
        return self.points + self.route_points + self.waypoints


# Parsed rows are (kind, seq, track, segment, lon, lat, ele, time, name,
# extensions): track/route/waypoint points, plus one row per track segment
# ("trkseg") and route ("rte") so that empty ones are stored too.
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
_STAGE_COPY = f"COPY trace_stage ({_STAGE_COLUMNS}) FROM STDIN"

# Where the store statement reads the rows: the staging table (inlined, as if
# the statement named it) or one array parameter per column (unnested once).
_FROM_TABLE = f"NOT MATERIALIZED (SELECT {_STAGE_COLUMNS} FROM trace_stage)"  # noqa: S608
_ARRAY_PARAMETERS = ", ".join(
    f"CAST(%(stage_{column})b AS {kind}[])" for column, kind in _STAGE_TYPES
)
_FROM_ARRAYS = f"MATERIALIZED (SELECT * FROM unnest({_ARRAY_PARAMETERS}) AS s({_STAGE_COLUMNS}))"  # noqa: S608

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
), trace AS (
    INSERT INTO traces (name, owner, visibility, settlement_id, content_sha256, points, tracks,
                        segments, routes, waypoints, length_m, duration_s, started_at,
                        ended_at, stats, dropped, warnings, geom)
    SELECT %(name)s, %(owner)s, %(visibility)s, %(settlement_id)s, %(sha)s, %(points)s,
           %(tracks)s, %(segments)s, %(routes)s, %(waypoints)s, round(l.length_m::numeric, 2),
           %(duration_s)s, %(started_at)s, %(ended_at)s,
           CAST(%(stats)s AS jsonb)
               || jsonb_build_object('length_m', round(l.length_m::numeric, 2)),
           CAST(%(dropped)s AS jsonb), CAST(%(warnings)s AS jsonb), l.geom
    FROM track_lines l
    RETURNING id, name, owner, visibility, settlement_id, version, stats, dropped, warnings,
              created_at, updated_at
), segments AS (
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
_STORE_STAGED = _STORE.format(source=_FROM_TABLE, file="")
_STORE_DIRECT = _STORE.format(source=_FROM_ARRAYS, file=_FILE_FROM_PARAMETER)


def _driver(conn: Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under ``conn`` (same transaction), for COPY."""
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
        self.staged = False
        self._copy: psycopg.Copy | None = None

    def write(self, row: tuple[Any, ...]) -> None:
        """Take one row."""
        if self._copy is not None:
            self._copy.write_row(row)
            return
        self.rows.append(row)
        if len(self.rows) > self.max_rows:
            self.spill()

    def spill(self) -> None:
        """Move to the staging table: create it, open the COPY, send the rows so far."""
        if self.staged:
            return
        # The COPY lasts as long as the parse: a 1M-point upload outlives the
        # ordinary statement timeout, so a staged ingest has its own (still bounded) one.
        self.conn.execute(
            text("SELECT set_config('statement_timeout', :ms, true)"), {"ms": str(self.timeout_ms)}
        )
        for statement in _STAGE.split(";"):
            self.conn.execute(text(statement))
        cursor = self.enter_context(_driver(self.conn).cursor())
        copy = self.enter_context(cursor.copy(_STAGE_COPY))
        for row in self.rows:
            copy.write_row(row)
        self.rows = []
        self.staged = True
        self._copy = copy

    def finish(self) -> None:
        """End the COPY, if there is one (the rows are then in the table)."""
        self.close()

    def arrays(self) -> dict[str, list[Any] | None]:
        """The listed rows as one array parameter per column (``stage_<column>``).

        A column without any value (no names, no extensions...) is sent as
        NULL, which ``unnest`` pads with NULLs like a short array: less to send.
        """
        columns = list(zip(*self.rows, strict=True)) if self.rows else [()] * len(_STAGE_TYPES)
        return {
            f"stage_{column}": list(values) if any(v is not None for v in values) else None
            for (column, _), values in zip(_STAGE_TYPES, columns, strict=True)
        }


def _parse(
    body: SpooledBody,
    limits: TraceLimits,
    dropped: Dropped,
    write: Callable[[tuple[Any, ...]], None],
) -> tuple[GpxReader, _Stats]:
    """Parse and clean every member of the upload, handing each row to ``write``."""
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
                json.dumps(ext, separators=(",", ":")) if ext else None,
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
            for item in reader.read(member.stream, member=member.name):
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
        except InvalidInput:
            # A parse error may hide bytes past the size limit (a bomb of junk):
            # then the size limit is the answer, not the XML error.
            member.stream.drain()
            for rest in contents:
                rest.stream.drain()
            raise
        cleaner.end_segment()
    return reader, stats


def _fingerprint(
    body: SpooledBody, name: str | None, visibility: str, settlement: int | None
) -> str:
    return idempotency.request_hash(body.sha256, name or "", visibility, str(settlement or ""))


def ingest_trace(
    conn: Connection,
    *,
    owner: str,
    body: SpooledBody,
    name: str | None,
    visibility: str,
    settlement_id: int | None,
    idempotency_key: str | None,
    limits: TraceLimits,
) -> IngestResult:
    """Store an uploaded GPX (plain, gzip, bzip2 or zip) as a trace; see the module doc.

    Raises
    ------
    InvalidInput
        400 for bytes that are not GPX (with line/column), 422 for a file
        without a usable point or a bad parameter, 413 past a limit.
    KeyReused
        The ``Idempotency-Key`` was used for a different upload.
    """
    if visibility not in VISIBILITIES:
        raise InvalidInput(f"visibility must be one of {', '.join(VISIBILITIES)}")
    if name is not None and not name.strip():
        name = None
    if idempotency_key is not None:
        stored = idempotency.claim(
            conn,
            principal=owner,
            key=idempotency_key,
            scope=SCOPE,
            fingerprint=_fingerprint(body, name, visibility, settlement_id),
        )
        if stored is not None:
            found = json.loads(stored.body)
            return IngestResult(stored.status, int(found["id"]), stored.body, replayed=True)
    existing = _lock_and_find(conn, owner=owner, sha256=body.sha256)
    if existing is not None:
        result = IngestResult(200, int(existing), _summary_json(conn, int(existing)))
    else:
        result = _store_new(
            conn,
            owner=owner,
            body=body,
            name=name,
            visibility=visibility,
            settlement_id=settlement_id,
            limits=limits,
        )
    if idempotency_key is not None:
        idempotency.complete(
            conn,
            principal=owner,
            key=idempotency_key,
            status=result.status,
            body=result.body,
            headers={"Location": f"/traces/{result.trace_id}"},
        )
    return result


def _lock_and_find(conn: Connection, *, owner: str, sha256: str) -> int | None:
    """Lock (owner, bytes) for the transaction; the live trace with those bytes, if any.

    Two statements, so that the look-up's snapshot is taken once the lock is
    held (it sees what an earlier holder committed), sent in one round trip.
    """
    raw = _driver(conn)
    with raw.pipeline(), raw.cursor() as lock, raw.cursor() as find:
        lock.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 6))", (f"trace/{owner}/{sha256}",)
        )
        find.execute(
            "SELECT id FROM traces WHERE owner = %s AND content_sha256 = %s AND deleted_at IS NULL",
            (owner, sha256),
        )
        row = find.fetchone()
    return None if row is None else int(row[0])


def _store_new(
    conn: Connection,
    *,
    owner: str,
    body: SpooledBody,
    name: str | None,
    visibility: str,
    settlement_id: int | None,
    limits: TraceLimits,
) -> IngestResult:
    if settlement_id is not None:
        live = conn.execute(
            text("SELECT 1 FROM settlements WHERE id = :i AND deleted_at IS NULL"),
            {"i": settlement_id},
        ).first()
        if live is None:
            raise InvalidInput(
                f"settlement_id {settlement_id} does not exist", field="settlement_id"
            )
    dropped = Dropped()
    with _Rows(conn, max_rows=limits.direct_max_rows, timeout_ms=limits.ingest_timeout_ms) as rows:
        if body.size > limits.direct_max_bytes:
            rows.spill()
        reader, stats = _parse(body, limits, dropped, rows.write)
        rows.finish()
    if stats.kept == 0:
        if reader.points_seen == 0:
            raise NoPoints("the file has no track point, route point or waypoint")
        raise NoPoints(
            f"no point with valid coordinates: {_describe(dropped)}",
            dropped=dropped.as_list(),
        )
    body.file.seek(0)
    content_type = CONTENT_TYPES[sniff(body.file)]
    params = _trace_params(
        owner=owner,
        body=body,
        name=name,
        visibility=visibility,
        settlement_id=settlement_id,
        reader=reader,
        stats=stats,
        dropped=dropped,
        content_type=content_type,
    )
    if rows.staged:
        row = _run_store(conn, _STORE_STAGED, params)
        conn.execute(text("DROP TABLE pg_temp.trace_stage"))
        _store_file(conn, int(row.id), body, content_type)
    else:
        body.file.seek(0)
        file = {"content_type": content_type, "size_bytes": body.size, "content": body.file.read()}
        row = _run_store(conn, _STORE_DIRECT, {**params, **rows.arrays(), **file})
    return IngestResult(201, int(row.id), json.dumps(_summary(row)).encode())


def _run_store(conn: Connection, statement: str, params: dict[str, Any]) -> Any:
    """Run a store statement on the driver connection; its one row (the new trace).

    psycopg directly rather than SQLAlchemy: the array parameters go in binary
    (``%(…)b``), several times cheaper to send than their text form.
    """
    with _driver(conn).cursor(row_factory=namedtuple_row) as cursor:
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
    content_type: str,
) -> dict[str, Any]:
    """The store statement's parameters for the trace row (stats as JSON too)."""
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
    }


def _store_file(conn: Connection, trace_id: int, body: SpooledBody, content_type: str) -> None:
    """Stream the original bytes into ``trace_files`` (COPY, hex bytea, in chunks)."""
    raw = _driver(conn)
    body.file.seek(0)
    with (
        raw.cursor() as cursor,
        cursor.copy(
            "COPY trace_files (trace_id, content_type, size_bytes, content) FROM STDIN"
        ) as copy,
    ):
        copy.write(f"{trace_id}\t{content_type}\t{body.size}\t\\\\x".encode())
        while chunk := body.file.read(FILE_CHUNK):
            copy.write(chunk.hex().encode())
        copy.write(b"\n")


# ------------------------------------------------------------------------ reads
_SUMMARY = """
SELECT id, name, owner, visibility, settlement_id, version, stats, dropped, warnings,
       created_at, updated_at
FROM traces WHERE id = :id AND deleted_at IS NULL
"""


def _summary(row: Any) -> dict[str, Any]:
    return {
        "id": int(row.id),
        "name": row.name,
        "owner": row.owner,
        "visibility": row.visibility,
        "settlement_id": row.settlement_id,
        "version": int(row.version),
        "stats": row.stats,
        "dropped": row.dropped,
        "warnings": row.warnings,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


def _summary_json(conn: Connection, trace_id: int) -> bytes:
    row = conn.execute(text(_SUMMARY), {"id": trace_id}).one()
    return json.dumps(_summary(row)).encode()


def _visible(user: Principal | None) -> tuple[str, dict[str, Any]]:
    """SQL predicate (on alias ``t``) for the traces ``user`` may see."""
    if user is None:
        return "t.visibility = 'public'", {}
    if user.at_least("admin"):
        return "TRUE", {}
    return "(t.visibility IN ('public', 'community') OR t.owner = :viewer)", {"viewer": user.name}


def _load(conn: Connection, trace_id: int, user: Principal | None) -> Any:
    """The live trace row the user may see, or NotFound (also for invisible ones)."""
    predicate, params = _visible(user)
    row = conn.execute(
        text(
            "SELECT t.id, t.name, t.owner, t.visibility, t.settlement_id, t.version, t.stats, "  # noqa: S608 (fixed predicates)
            "t.dropped, t.warnings, t.created_at, t.updated_at, t.content_sha256 "
            f"FROM traces t WHERE t.id = :id AND t.deleted_at IS NULL AND {predicate}"
        ),
        {"id": trace_id, **params},
    ).first()
    if row is None:
        raise NotFound(f"trace {trace_id} does not exist or is not visible to you")
    return row


def get_trace(conn: Connection, *, trace_id: int, user: Principal | None) -> dict[str, Any]:
    """A trace's metadata (``id, name, owner, visibility, stats, dropped, warnings, …``)."""
    return _summary(_load(conn, trace_id, user))


def list_traces(
    conn: Connection,
    *,
    user: Principal | None,
    limit: int,
    offset: int = 0,
    owner: str | None = None,
    settlement_id: int | None = None,
    visibility: str | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Traces the user may see, newest first; and whether more remain."""
    predicate, params = _visible(user)
    clauses = ["t.deleted_at IS NULL", predicate]
    if owner is not None:
        clauses.append("t.owner = :owner")
        params["owner"] = owner
    if settlement_id is not None:
        clauses.append("t.settlement_id = :settlement_id")
        params["settlement_id"] = settlement_id
    if visibility is not None:
        clauses.append("t.visibility = :visibility")
        params["visibility"] = visibility
    rows = conn.execute(
        text(
            "SELECT t.id, t.name, t.owner, t.visibility, t.settlement_id, t.version, t.stats, "  # noqa: S608 (fixed predicates)
            "t.dropped, t.warnings, t.created_at, t.updated_at FROM traces t "
            f"WHERE {' AND '.join(clauses)} ORDER BY t.id DESC LIMIT :limit OFFSET :offset"
        ),
        {**params, "limit": limit + 1, "offset": offset},
    ).all()
    return [_summary(row) for row in rows[:limit]], len(rows) > limit


def trace_file(conn: Connection, *, trace_id: int, user: Principal | None) -> dict[str, Any]:
    """Name, content type, size and SHA-256 of a trace's original upload."""
    row = _load(conn, trace_id, user)
    meta = conn.execute(
        text("SELECT content_type, size_bytes FROM trace_files WHERE trace_id = :id"),
        {"id": trace_id},
    ).one()
    return {
        "name": row.name,
        "content_type": meta.content_type,
        "size": int(meta.size_bytes),
        "sha256": row.content_sha256,
    }


def trace_file_chunks(conn: Connection, *, trace_id: int, size: int) -> Iterator[bytes]:
    """The original bytes, a few MB at a time."""
    for offset in range(0, size, FILE_CHUNK):
        chunk = conn.execute(
            text(
                "SELECT substring(content FROM :start FOR :n) FROM trace_files WHERE trace_id = :id"
            ),
            {"start": offset + 1, "n": FILE_CHUNK, "id": trace_id},
        ).scalar_one()
        yield bytes(chunk)


_GEOJSON = """
(SELECT json_build_object(
    'type', 'Feature',
    'geometry', ST_AsGeoJSON(coalesce(s.geom, p.geom), 7)::json,
    'properties', json_build_object('kind', s.kind, 'track', s.track, 'segment', s.segment,
                                    'points', s.points))::text
FROM trace_segments s
LEFT JOIN LATERAL (
    SELECT geom FROM trace_points
    WHERE s.geom IS NULL AND s.points = 1 AND trace_id = s.trace_id
      AND kind = CASE s.kind WHEN 'track' THEN 'trkpt' ELSE 'rtept' END
      AND track = s.track AND segment = s.segment
    LIMIT 1) p ON TRUE
WHERE s.trace_id = :id AND (s.geom IS NOT NULL OR p.geom IS NOT NULL)
ORDER BY s.kind = 'route', s.track, s.segment)
UNION ALL
(SELECT json_build_object(
    'type', 'Feature',
    'geometry', ST_AsGeoJSON(geom, 7)::json,
    'properties', json_build_object('kind', 'waypoint', 'name', name, 'ele', ele,
                                    'time', time, 'extensions', extensions))::text
FROM trace_points WHERE trace_id = :id AND kind = 'wpt'
ORDER BY seq)
"""


def trace_geojson_chunks(
    conn: Connection, *, trace_id: int, user: Principal | None
) -> Iterator[bytes]:
    """The cleaned geometry as a GeoJSON FeatureCollection, built by PostGIS and streamed.

    Track segments come first, then route segments, then waypoints, each in
    file order.  Track and route segments are LineStrings (a one-point segment a Point);
    waypoints are Points with their name, elevation, time and extensions.
    """
    row = _load(conn, trace_id, user)
    head = {
        "type": "FeatureCollection",
        "trace": {"id": int(row.id), "name": row.name, "visibility": row.visibility},
        "features": [],
    }
    prefix = json.dumps(head)[: -len("]}")]
    yield prefix.encode()
    result = conn.execute(
        text(_GEOJSON),
        {"id": trace_id},
        execution_options={"stream_results": True, "yield_per": 2000},
    )
    first = True
    for feature in result.scalars():
        yield (feature if first else "," + feature).encode()
        first = False
    yield b"]}"


# ----------------------------------------------------------------------- writes
def _owned(conn: Connection, trace_id: int, user: Principal, action: str) -> Any:
    row = _load(conn, trace_id, user)
    if row.owner != user.name and not user.at_least("admin"):
        raise Forbidden(f"only the trace's owner or an admin may {action} trace {trace_id}")
    return row


def _check_version(row: Any, expected: int | None, trace_id: int) -> None:
    if expected is not None and int(row.version) != expected:
        raise PreconditionFailed(
            f"trace {trace_id} is at version {row.version}; your If-Match is stale",
            current_version=int(row.version),
        )


def delete_trace(
    conn: Connection, *, trace_id: int, user: Principal, expected_version: int | None = None
) -> None:
    """Soft-delete a trace (owner or admin); its bytes stay for the audit trail."""
    row = _owned(conn, trace_id, user, "delete")
    _check_version(row, expected_version, trace_id)
    conn.execute(
        text("UPDATE traces SET deleted_at = now() WHERE id = :id AND deleted_at IS NULL"),
        {"id": trace_id},
    )


def patch_trace(
    conn: Connection,
    *,
    trace_id: int,
    user: Principal,
    fields: dict[str, Any],
    expected_version: int | None,
) -> dict[str, Any]:
    """Change ``name``, ``visibility`` or ``settlement_id`` (owner or admin)."""
    if not isinstance(fields, dict) or not fields:
        raise InvalidInput("the body must be a JSON object with name, visibility or settlement_id")
    unknown = sorted(set(fields) - {"name", "visibility", "settlement_id"})
    if unknown:
        raise InvalidInput(
            f"cannot change {', '.join(unknown)}; only name, visibility and settlement_id",
            field=unknown[0],
        )
    values: dict[str, Any] = {}
    if "name" in fields:
        name = fields["name"]
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= 300:
            raise InvalidInput("name must be a string of 1 to 300 characters", field="name")
        values["name"] = name.strip()
    if "visibility" in fields:
        if fields["visibility"] not in VISIBILITIES:
            raise InvalidInput(
                f"visibility must be one of {', '.join(VISIBILITIES)}", field="visibility"
            )
        values["visibility"] = fields["visibility"]
    if "settlement_id" in fields:
        sid = fields["settlement_id"]
        if sid is not None and (not isinstance(sid, int) or isinstance(sid, bool)):
            raise InvalidInput("settlement_id must be an integer or null", field="settlement_id")
        if (
            sid is not None
            and conn.execute(
                text("SELECT 1 FROM settlements WHERE id = :i AND deleted_at IS NULL"), {"i": sid}
            ).first()
            is None
        ):
            raise InvalidInput(f"settlement_id {sid} does not exist", field="settlement_id")
        values["settlement_id"] = sid
    row = _owned(conn, trace_id, user, "change")
    _check_version(row, expected_version, trace_id)
    assignments = ", ".join(f"{column} = :{column}" for column in values)  # fixed names
    updated = conn.execute(
        text(
            f"UPDATE traces SET {assignments} WHERE id = :id AND version = :v "  # noqa: S608
            "AND deleted_at IS NULL RETURNING id"
        ),
        {**values, "id": trace_id, "v": int(row.version)},
    ).first()
    if updated is None:  # changed between the read and the write
        current = _load(conn, trace_id, user)
        _check_version(current, int(row.version), trace_id)
    return get_trace(conn, trace_id=trace_id, user=user)


# --------------------------------------------------------------------- boundary
def trace_boundary(
    conn: Connection,
    *,
    trace_id: int,
    user: Principal,
    max_gap_m: float,
    simplify_m: float,
    settlement_id: int | None = None,
    expected_version: int | None = None,
) -> tuple[dict[str, Any], int | None]:
    """The polygon a perimeter walk encloses, as a GeoJSON Feature.

    The trace's kept track points, in order, are projected to UTM 37S and
    handed to :func:`geo.perimeter.boundary_polygon`.  With ``settlement_id``
    the polygon becomes that settlement's new boundary version (audited);
    ``expected_version`` is its ``If-Match`` (None for ``*``).

    Returns
    -------
    The Feature and, when a settlement was written, its new version.
    """
    _load(conn, trace_id, user)
    wkb = conn.execute(
        text(
            "SELECT ST_AsBinary(ST_Transform(ST_MakeLine(geom ORDER BY track, segment, seq), "
            ":srid)) FROM trace_points WHERE trace_id = :id AND kind = 'trkpt'"
        ),
        {"id": trace_id, "srid": UTM_37S},
    ).scalar()
    if wkb is None:
        raise InvalidInput(f"trace {trace_id} has no track points to make a boundary from")
    line = shapely.from_wkb(bytes(wkb))
    try:
        result = boundary_polygon(
            shapely.get_coordinates(line), max_gap_m=max_gap_m, simplify_m=simplify_m
        )
    except OpenWalk as exc:
        raise InvalidInput(
            str(exc), closure_gap_m=round(exc.gap_m, 2), max_gap_m=exc.max_gap_m
        ) from exc
    except TooFewPoints as exc:
        raise InvalidInput(str(exc)) from exc
    polygon_wkb = shapely.to_wkb(result.polygon)
    geometry_json = conn.execute(
        text(
            f"SELECT ST_AsGeoJSON(ST_Transform(ST_SetSRID(ST_GeomFromWKB(:w), {UTM_37S}), 4326), 8)"
        ),
        {"w": polygon_wkb},
    ).scalar_one()
    properties: dict[str, Any] = {
        "trace_id": trace_id,
        "area_m2": round(result.area_m2, 2),
        "perimeter_m": round(result.perimeter_m, 2),
        "closure_gap_m": round(result.closure_gap_m, 2),
        "vertices": result.vertices,
        "simplify_m": simplify_m,
        "crs_for_measures": f"EPSG:{UTM_37S}",
        "warnings": result.warnings,
    }
    new_version: int | None = None
    if settlement_id is not None:
        new_version = _write_settlement(conn, settlement_id, polygon_wkb, expected_version)
        properties["settlement_id"] = settlement_id
        properties["settlement_version"] = new_version
    feature = {"type": "Feature", "geometry": json.loads(geometry_json), "properties": properties}
    return feature, new_version


def _write_settlement(
    conn: Connection, settlement_id: int, polygon_wkb: bytes, expected_version: int | None
) -> int:
    current = conn.execute(
        text("SELECT version FROM settlements WHERE id = :i AND deleted_at IS NULL FOR UPDATE"),
        {"i": settlement_id},
    ).first()
    if current is None:
        raise NotFound(f"settlements {settlement_id} does not exist")
    if expected_version is not None and int(current.version) != expected_version:
        raise PreconditionFailed(
            f"settlements {settlement_id} is at version {current.version}; your If-Match is stale",
            current_version=int(current.version),
        )
    version = conn.execute(
        text(
            "UPDATE settlements SET geom = ST_Multi(ST_CollectionExtract(ST_MakeValid("
            "ST_Transform(ST_SetSRID(ST_GeomFromWKB(:w), :srid), 4326)), 3)) "
            "WHERE id = :i RETURNING version"
        ),
        {"w": polygon_wkb, "i": settlement_id, "srid": UTM_37S},
    ).scalar_one()
    return int(version)
