"""A streaming, hardened GPX 1.0/1.1 reader.

:class:`GpxReader` feeds a byte stream to lxml's pull parser chunk by chunk
and yields one item per GPX element of interest as soon as it ends:

* :class:`Container` when a ``trk``, ``trkseg`` or ``rte`` starts (empty ones
  count too);
* :class:`Point` for a ``trkpt``, ``rtept`` or ``wpt`` with valid coordinates;
* :class:`BadPoint` for one whose ``lat``/``lon`` is missing, not a number,
  not finite or out of range, with the reason.

Every element is cleared as soon as it has been read, so memory does not grow
with the file.  The parser never loads a DTD, resolves an entity or touches
the network, and any ``DOCTYPE`` is refused: billion-laughs and
external-entity files are :class:`XmlError` (a 400 for HTTP clients).
Nesting deeper than ``max_depth`` and points with more than
``max_point_elements`` child elements are refused too.

Elements are matched by local name and position (``gpx/trk/trkseg/trkpt``,
``gpx/rte/rtept``, ``gpx/wpt``), whatever their namespace or prefix, so GPX 1.0,
1.1, un-namespaced and prefixed files all read the same way; a foreign
namespace on the root is read with a warning.

``read(stream, fast=True)`` takes a quicker road for ordinary files: lxml
reports only the GPX elements themselves (``gpx``, ``trk``, ``trkseg``,
``rte`` and the points), every other element is checked in bulk when its
part of the tree is dropped, and the items are the same.  Anything the exact
reader would answer differently for (an XML error, a DOCTYPE, an element out
of place or nesting too deep, a limit passed) raises :class:`Unusual`
instead: the caller reads the upload again with ``fast=False``, so every
error keeps its exact message, line and column.

>>> import io
>>> reader = GpxReader()
>>> items = list(reader.read(io.BytesIO(
...     b'<gpx version="1.1"><trk><trkseg>'
...     b'<trkpt lat="-1.31" lon="36.78"><ele>1700</ele>'
...     b'<time>2024-05-01T08:00:00.1234567+03:00</time></trkpt>'
...     b'<trkpt lat="undefined" lon="36.79"/></trkseg></trk></gpx>')))
>>> [type(item).__name__ for item in items]
['Container', 'Container', 'Point', 'BadPoint']
>>> items[2].time.isoformat(), items[3].reason
('2024-05-01T08:00:00.123456+03:00', 'lat not numeric')
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from lxml import etree

from geo.core.errors import BadRequest

__all__ = [
    "GPX_NAMESPACES",
    "NUMERIC_FIELDS",
    "BadPoint",
    "Container",
    "GpxError",
    "GpxReader",
    "Item",
    "NotGpx",
    "Point",
    "TooManyPoints",
    "Unusual",
    "XmlError",
    "parse_time",
]

GPX_NAMESPACES = {
    "http://www.topografix.com/GPX/1/0": "1.0",
    "http://www.topografix.com/GPX/1/1": "1.1",
}
CHUNK = 64 * 1024
MAX_EXTENSION_KEYS = 64
MAX_TEXT = 500

#: Point children kept in the extensions JSON, as numbers / as text.
NUMERIC_FIELDS = frozenset(
    {"hdop", "vdop", "pdop", "speed", "course", "sat", "magvar", "geoidheight",
     "ageofdgpsdata", "dgpsid"}
)  # fmt: skip
_TEXT_FIELDS = frozenset({"fix", "desc", "cmt", "sym", "type", "src"})


class GpxError(BadRequest):
    """The upload is not acceptable GPX (a 400 unless the subclass says otherwise).

    Attributes
    ----------
    line, column
        Where in the XML the problem is, when known (1-based).
    member
        The file inside an archive, when the upload was one.
    """

    slug = "invalid-gpx"

    def __init__(
        self,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
        member: str | None = None,
    ) -> None:
        self.message = message
        self.line = line
        self.column = column
        self.member = member
        super().__init__(self.describe(), line=line, column=column, member=member)

    def describe(self) -> str:
        """The message with its member and position."""
        where = []
        if self.member:
            where.append(f"in {self.member}")
        if self.line:
            where.append(
                f"at line {self.line}" + (f", column {self.column}" if self.column else "")
            )
        return f"{self.message} ({' '.join(where)})" if where else self.message


class XmlError(GpxError):
    """Not well-formed XML, or XML that this reader refuses (DTDs, deep nesting)."""

    slug = "invalid-xml"


class NotGpx(GpxError):
    """Well-formed XML whose root is not ``<gpx>``."""

    slug = "not-gpx"


class TooManyPoints(GpxError):
    """More points (or tracks, segments, routes) than the configured limit: a 413."""

    status = 413
    slug = "too-many-points"

    def __init__(self, limit: int, member: str | None = None, what: str = "points") -> None:
        super().__init__(f"the file has more than {limit:,} {what}", member=member)
        self.limit = limit


class Unusual(Exception):
    """The fast read met something only the exact read answers for: read again with it."""


@dataclass(slots=True)
class Container:
    """A ``trk``, ``trkseg`` or ``rte`` started (0-based indexes in the upload)."""

    kind: str
    track: int
    segment: int | None


@dataclass(slots=True)
class Point:
    """A point with valid coordinates.

    ``index`` counts points of the same kind in the upload, valid or not;
    ``track`` is the track (or route) index and ``segment`` the segment index
    (0 for route points, ``None`` for waypoints).
    """

    kind: str
    index: int
    track: int | None
    segment: int | None
    lat: float
    lon: float
    ele: float | None
    time: datetime | None
    name: str | None
    extensions: dict[str, Any] | None
    hdop: float | None
    epoch: float | None = None


@dataclass(slots=True)
class BadPoint:
    """A point dropped for its coordinates, with the reason and the bad value."""

    kind: str
    index: int
    track: int | None
    segment: int | None
    reason: str
    value: str | None


Item = Container | Point | BadPoint

_PARSER_OPTIONS: dict[str, Any] = {
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "huge_tree": False,
    "remove_comments": True,
    "remove_pis": True,
    "collect_ids": False,
}
#: The elements the fast read is told about (any namespace or none).
_POINT_DEPTH = {"trkpt": 4, "rtept": 3, "wpt": 2}
_FAST_TAGS = ("{*}gpx", "{*}trk", "{*}trkseg", "{*}rte", "{*}trkpt", "{*}rtept", "{*}wpt")


_LOCAL_NAMES: dict[str, str] = {}
_LOCAL_NAMES_MAX = 512


def _local(tag: str) -> str:
    """The tag without its namespace (remembered for the first few hundred tags)."""
    local = _LOCAL_NAMES.get(tag)
    if local is None:
        local = tag[tag.rfind("}") + 1 :]
        if len(_LOCAL_NAMES) < _LOCAL_NAMES_MAX:
            _LOCAL_NAMES[tag] = local
    return local


def _coordinate(text: str | None, name: str, bound: float) -> tuple[float, str | None]:
    """The coordinate's value, or a reason it is unusable."""
    if text is None:
        return 0.0, f"{name} missing"
    value_text = text.strip()
    if not value_text or "_" in value_text:
        return 0.0, f"{name} not numeric"
    try:
        value = float(value_text)
    except ValueError:
        return 0.0, f"{name} not numeric"
    if not math.isfinite(value):
        return 0.0, f"{name} not finite"
    if not -bound <= value <= bound:
        return 0.0, f"{name} out of range"
    return value, None


def _number(text: str | None) -> float | None:
    """A finite float from element text, or None."""
    if text is None:
        return None
    value_text = text.strip()
    if not value_text or "_" in value_text:
        return None
    try:
        value = float(value_text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _value(text: str) -> float | str:
    number = _number(text)
    return number if number is not None else text[:MAX_TEXT]


def parse_time(text: str) -> tuple[datetime | None, bool]:
    """An ISO 8601 time and whether it carried a zone.

    Accepts ``Z`` or any offset, 0 to 7 (or more) fractional digits (kept to
    microseconds), a comma as decimal mark, and years 1 to 9999.  A time
    without a zone is read as UTC, as GPX prescribes.

    >>> parse_time("1901-12-13T20:45:52.2073437Z")[0].isoformat()
    '1901-12-13T20:45:52.207343+00:00'
    >>> parse_time("2024-02-30T00:00:00Z")
    (None, False)
    """
    value_text = text.strip()
    try:
        value = datetime.fromisoformat(value_text)
    except ValueError:
        try:
            value = datetime.fromisoformat(value_text.upper())
        except ValueError:
            return None, False
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC), False
    return value, True


class GpxReader:
    """Read GPX from byte streams into :data:`Item` objects, with limits.

    One reader can read several streams (the members of a zip archive) into
    one trace: track, route and point indexes continue across them, and the
    point limit applies to their sum.

    Parameters
    ----------
    max_points
        Most points (of all kinds, valid or not) to accept before raising
        :class:`TooManyPoints`.
    max_depth
        Deepest element nesting accepted.
    max_point_elements
        Most descendant elements one point may have (extensions included).
    """

    def __init__(
        self,
        *,
        max_points: int = 1_000_000,
        max_depth: int = 64,
        max_point_elements: int = 1_000,
    ) -> None:
        self.max_points = max_points
        self.max_depth = max_depth
        self.max_point_elements = max_point_elements
        self.tracks = 0
        self.segments = 0
        self.routes = 0
        self.points_seen = 0
        self.versions: list[str] = []
        self._warnings: dict[str, None] = {}
        self._index = {"trkpt": 0, "rtept": 0, "wpt": 0}
        self.times_without_zone = 0
        self.bad_times = 0
        self.bad_elevations = 0

    # ------------------------------------------------------------------ public
    @property
    def warnings(self) -> list[str]:
        """What was odd but readable, one sentence each."""
        notes = list(self._warnings)
        if self.times_without_zone:
            notes.append(f"{self.times_without_zone} point time(s) had no time zone; read as UTC")
        if self.bad_times:
            notes.append(f"{self.bad_times} point time(s) could not be read and were left out")
        if self.bad_elevations:
            notes.append(f"{self.bad_elevations} elevation(s) were not numbers and were left out")
        return notes

    def warn(self, message: str) -> None:
        """Add a warning (each distinct one once)."""
        self._warnings[message] = None

    def read(
        self, stream: IO[bytes] | io.RawIOBase, *, member: str | None = None, fast: bool = False
    ) -> Iterator[Item]:
        """Parse one GPX document from ``stream`` (``fast``: see the module doc).

        Raises
        ------
        XmlError
            Not well-formed, a DOCTYPE, or nesting too deep (with line/column).
        NotGpx
            The root element is not ``gpx``.
        TooManyPoints
            Past ``max_points``.
        Unusual
            With ``fast``, instead of any of these (and of anything the exact
            read might answer differently): this reader is then spent.
        """
        if fast and self.max_depth >= 8:
            return self._read_fast(stream, member)
        return self._read_exact(stream, member)

    def _read_exact(self, stream: IO[bytes] | io.RawIOBase, member: str | None) -> Iterator[Item]:
        parser = etree.XMLPullParser(events=("start", "end"), **_PARSER_OPTIONS)
        state = _State(member)
        received = 0
        try:
            while True:
                chunk = stream.read(CHUNK)
                if not chunk:
                    break
                received += len(chunk)
                parser.feed(chunk)
                yield from self._events(parser.read_events(), state)
            parser.close()
            yield from self._events(parser.read_events(), state)
        except etree.XMLSyntaxError as exc:
            line, column = exc.position if exc.position else (None, None)
            message = str(exc.msg or exc).split(" (<string>")[0]
            message = message.rsplit(", line ", 1)[0]
            if received == 0:
                raise XmlError("the file is empty: no XML document", member=member) from exc
            if not state.started and "Start tag expected" in message:
                message = f"not an XML document: {message}"
            raise XmlError(
                message, line=line or None, column=column or None, member=member
            ) from exc

    # ----------------------------------------------------------------- helpers
    def _events(self, events: Iterable[tuple[str, Any]], state: _State) -> Iterator[Item]:
        max_depth = self.max_depth
        for event, element in events:
            if event == "start":
                state.depth += 1
                if state.depth > max_depth:
                    raise XmlError(
                        f"excessive depth: elements nest deeper than {max_depth} levels",
                        line=element.sourceline,
                        member=state.member,
                    )
                if state.point is not None:
                    state.point_elements += 1
                    if state.point_elements > self.max_point_elements:
                        raise XmlError(
                            f"a {state.point_kind} has more than {self.max_point_elements} "
                            "child elements",
                            line=element.sourceline,
                            member=state.member,
                        )
                    continue
                local = _local(element.tag)
                depth = state.depth
                parent = state.stack[-1] if state.stack else ""
                state.stack.append(local)
                if depth == 1:
                    self._root(element, local, state)
                elif self.tracks + self.segments + self.routes > self.max_points:
                    raise TooManyPoints(
                        self.max_points, member=state.member, what="tracks, segments and routes"
                    )
                elif depth == 2:
                    if local == "trk":
                        self.tracks += 1
                        state.track = self.tracks - 1
                        state.segment = -1
                        yield Container("trk", state.track, None)
                    elif local == "rte":
                        self.routes += 1
                        state.route = self.routes - 1
                        yield Container("rte", state.route, None)
                    elif local == "wpt":
                        self._start_point(element, "wpt", state)
                elif depth == 3 and parent == "trk" and local == "trkseg":
                    self.segments += 1
                    state.segment += 1
                    yield Container("trkseg", state.track, state.segment)
                elif depth == 4 and parent == "trkseg" and local == "trkpt":
                    self._start_point(element, "trkpt", state)
                elif depth == 3 and parent == "rte" and local == "rtept":
                    self._start_point(element, "rtept", state)
            else:
                if state.point is not None and element is not state.point:
                    state.depth -= 1
                    continue
                if element is state.point:
                    yield self._point(element, state)
                    state.point = None
                state.stack.pop()
                state.depth -= 1
                element.clear()
                if element.getprevious() is not None:
                    parent_element = element.getparent()
                    while element.getprevious() is not None:
                        del parent_element[0]

    def _read_fast(self, stream: IO[bytes] | io.RawIOBase, member: str | None) -> Iterator[Item]:
        parser = etree.XMLPullParser(events=("start", "end"), tag=_FAST_TAGS, **_PARSER_OPTIONS)
        state = _State(member)
        try:
            while chunk := stream.read(CHUNK):
                parser.feed(chunk)
                yield from self._fast_events(parser.read_events(), state)
            parser.close()
            yield from self._fast_events(parser.read_events(), state)
        except Exception as exc:  # whatever it is, the exact read says it exactly
            raise Unusual(str(exc)) from exc
        if not state.ended:
            raise Unusual("no <gpx> root")

    def _fast_events(self, events: Iterable[tuple[str, Any]], state: _State) -> Iterator[Item]:
        """The exact read's items from GPX elements only (see the module doc)."""
        for event, element in events:
            if event == "start":
                if state.point is not None:
                    raise Unusual("a GPX element inside a point")
                local = _local(element.tag)
                parent = element.getparent()
                if local == "gpx":
                    if parent is not None:
                        raise Unusual("<gpx> below the root")
                    self._root(element, local, state)
                    state.root = state.container = element
                elif parent is None or parent is not state.container:
                    raise Unusual(f"<{local}> out of place")
                elif local == "trk" and parent is state.root:
                    self.tracks += 1
                    state.track = self.tracks - 1
                    state.segment = -1
                    state.container = state.trk = element
                    yield Container("trk", state.track, None)
                elif local == "trkseg" and parent is state.trk:
                    self.segments += 1
                    state.segment += 1
                    state.container = state.trkseg = element
                    yield Container("trkseg", state.track, state.segment)
                elif local == "rte" and parent is state.root:
                    self.routes += 1
                    state.route = self.routes - 1
                    state.container = state.rte = element
                    yield Container("rte", state.route, None)
                elif local == "trkpt" and parent is state.trkseg:
                    self._start_point(element, "trkpt", state)
                elif local == "rtept" and parent is state.rte:
                    self._start_point(element, "rtept", state)
                elif local == "wpt" and parent is state.root:
                    self._start_point(element, "wpt", state)
                else:
                    raise Unusual(f"<{local}> out of place")
                if self.tracks + self.segments + self.routes > self.max_points:
                    raise Unusual("too many containers")
            elif element is state.point:
                self._check_point(element, state)
                yield self._point(element, state)
                state.point = None
                self._drop_before(element, state)
                element.clear()
            elif element is state.root:
                self._check_tree(element, 1)
                state.ended = True
                state.container = None
            elif element is state.container:
                parent = element.getparent()
                if parent is state.root:  # a trk or rte: its remaining parts, then itself
                    self._check_tree(element, 2)
                    self._drop_before(element, state)
                    element.clear()
                    state.container = state.root
                    state.trk = state.rte = None
                else:  # a trkseg
                    state.container = parent
                    state.trkseg = None

    def _check_point(self, element: Any, state: _State) -> None:
        """Unusual unless the point's children are few and shallow enough."""
        if len(element) > self.max_point_elements:
            raise Unusual("many point children")
        for child in element:
            if len(child):
                if sum(1 for _ in element.iterdescendants()) > self.max_point_elements:
                    raise Unusual("many point elements")
                self._check_tree(element, _POINT_DEPTH[state.point_kind])
                return

    def _check_tree(self, element: Any, depth: int) -> None:
        """Unusual if an element below ``element`` (at ``depth``) nests past ``max_depth``."""
        stack = [(element, depth)]
        while stack:
            node, level = stack.pop()
            if level > self.max_depth:
                raise Unusual("deep nesting")
            stack.extend((child, level + 1) for child in node)

    def _drop_before(self, element: Any, state: _State) -> None:
        """Free the elements before ``element``, checking those no event reported."""
        parent = element.getparent()
        tag = element.tag
        depth = 2 if parent is state.root else 4 if parent is state.trkseg else 3
        while (previous := element.getprevious()) is not None:
            if previous.tag != tag:
                self._check_tree(previous, depth)
            del parent[0]

    def _root(self, element: Any, local: str, state: _State) -> None:
        state.started = True
        if element.getroottree().docinfo.internalDTD is not None:
            raise XmlError(
                "a DOCTYPE declaration is not allowed (no DTDs or entities in GPX uploads)",
                line=element.sourceline,
                member=state.member,
            )
        if local != "gpx":
            raise NotGpx(
                f"the root element is <{local}>, not <gpx>: this is not a GPX file",
                line=element.sourceline,
                member=state.member,
            )
        tag: str = element.tag
        namespace = tag[1 : tag.index("}")] if tag.startswith("{") else None
        version = element.get("version")
        if namespace in GPX_NAMESPACES:
            self.versions.append(GPX_NAMESPACES[namespace])
        elif namespace is None:
            self.versions.append(version or "unknown")
        else:
            self.versions.append(version or "unknown")
            self.warn(
                f"the <gpx> root is in the namespace {namespace!r}, not GPX 1.0 or 1.1; "
                "it was read as GPX anyway"
            )
        if version is not None and version.strip() not in ("1.0", "1.1"):
            self.warn(f"GPX version {version.strip()[:40]!r} is not 1.0 or 1.1; read as GPX 1.1")

    def _start_point(self, element: Any, kind: str, state: _State) -> None:
        self.points_seen += 1
        if self.points_seen > self.max_points:
            raise TooManyPoints(self.max_points, member=state.member)
        state.point = element
        state.point_kind = kind
        state.point_elements = 0

    def _point(self, element: Any, state: _State) -> Point | BadPoint:
        kind = state.point_kind
        index = self._index[kind]
        self._index[kind] = index + 1
        if kind == "trkpt":
            track: int | None = state.track
            segment: int | None = state.segment
        elif kind == "rtept":
            track, segment = state.route, 0
        else:
            track = segment = None
        lat_text = element.get("lat")
        lat, why = _coordinate(lat_text, "lat", 90.0)
        if why is not None:
            return BadPoint(kind, index, track, segment, why, lat_text)
        lon_text = element.get("lon")
        lon, why = _coordinate(lon_text, "lon", 180.0)
        if why is not None:
            return BadPoint(kind, index, track, segment, why, lon_text)
        ele: float | None = None
        when: datetime | None = None
        name: str | None = None
        ext: dict[str, Any] | None = None
        for child in element:
            local = _local(child.tag)
            text = child.text
            if local == "ele":
                ele = _number(text)
                if ele is None and text and text.strip():
                    self.bad_elevations += 1
            elif local == "time":
                if text and text.strip():
                    when, zoned = parse_time(text)
                    if when is None:
                        self.bad_times += 1
                    elif not zoned:
                        self.times_without_zone += 1
            elif local == "name":
                if text and text.strip():
                    name = text.strip()[:MAX_TEXT]
            elif local == "extensions":
                for sub in child.iter():
                    if sub is child or len(sub):
                        continue
                    sub_text = sub.text
                    if sub_text and sub_text.strip():
                        if ext is None:
                            ext = {}
                        if len(ext) < MAX_EXTENSION_KEYS:
                            ext[_local(sub.tag)] = _value(sub_text.strip())
            elif local in NUMERIC_FIELDS:
                number = _number(text)
                if number is not None:
                    if ext is None:
                        ext = {}
                    ext[local] = number
            elif local in _TEXT_FIELDS and text and text.strip():
                if ext is None:
                    ext = {}
                ext[local] = text.strip()[:MAX_TEXT]
        hdop = ext.get("hdop") if ext else None
        return Point(
            kind,
            index,
            track,
            segment,
            lat,
            lon,
            ele,
            when,
            name,
            ext,
            hdop if isinstance(hdop, float) else None,
            when.timestamp() if when is not None else None,
        )


class _State:
    """Where the parser is inside one document."""

    __slots__ = (
        "container",
        "depth",
        "ended",
        "member",
        "point",
        "point_elements",
        "point_kind",
        "root",
        "route",
        "rte",
        "segment",
        "stack",
        "started",
        "track",
        "trk",
        "trkseg",
    )

    def __init__(self, member: str | None) -> None:
        self.member = member
        self.depth = 0
        self.stack: list[str] = []
        self.point: Any = None
        self.point_kind = ""
        self.point_elements = 0
        self.track = -1
        self.segment = -1
        self.route = -1
        self.started = False
        # the fast read: the root, the trk, trkseg and rte open now, and the innermost
        self.root: Any = None
        self.trk: Any = None
        self.trkseg: Any = None
        self.rte: Any = None
        self.container: Any = None
        self.ended = False
