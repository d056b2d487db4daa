"""The columnar read: plain GPX track files straight from bytes to arrays.

Most uploads are what a phone or a GPS app writes: one ``<gpx>`` root, tracks
of segments of ``<trkpt lat=".." lon="..">`` with ``ele``, ``time`` (UTC, ``Z``)
and ``hdop`` children, in that order.  :func:`read_columns` reads such a
document without an element per point: compiled regular expressions find the
points of a bounded piece of the bytes (``findall``, in C), numpy turns each
column into numbers and times, and :func:`geo.traces.cleaning.clean_track`
cleans a whole segment at once.  It hands each segment's kept points to the
caller as arrays (:class:`TrackPoints`).

It vouches for the answer only where it is certain the exact read
(:class:`geo.traces.gpx.GpxReader`) gives the same: every ``<`` of a piece
must belong to a point it matched, and the bytes must be printable ASCII
(tab and line ends allowed) without ``&`` or ``]]>``, so no comment, CDATA,
entity, DOCTYPE, processing instruction, other element or namespace prefix
can hide in them.  Anything else (another encoding, single quotes,
attributes or children in another order, ``rte`` or ``wpt``, ``metadata``,
extensions, a time with an offset, a limit passed...) raises
:class:`~geo.traces.gpx.Unusual`: the caller then reads the upload with the
reader, and every answer and error message stays the same.  Coordinates
that are not numbers, out of range or odd times are read one by one with the
reader's own rules.

>>> import io
>>> from geo.traces.cleaning import Dropped
>>> from geo.traces.gpx import GpxReader
>>> data = (b'<gpx version="1.1"><trk><trkseg>'
...         b'<trkpt lat="-1.31" lon="36.78"><ele>1700</ele></trkpt>'
...         b'<trkpt lat="x" lon="36.79"/></trkseg></trk></gpx>')
>>> read_columns(io.BytesIO(data), GpxReader(), Dropped(), max_speed_mps=60, max_hdop=20,
...              on_segment=print, on_points=print)
Traceback (most recent call last):
...
geo.traces.gpx.Unusual: a piece of a segment is not plain points
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

import numpy as np
import numpy.typing as npt

from geo.traces.cleaning import Dropped, clean_track
from geo.traces.gpx import GpxReader, Unusual, _coordinate, parse_time

__all__ = ["NAT", "TrackPoints", "read_columns"]

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]

#: Bytes read at a time; a token (or one point) longer than this is unusual.
CHUNK = 1024 * 1024
NAT = np.iinfo(np.int64).min

_WS = rb"[ \t\r\n]*"
_NUMBER = rb"-?[0-9]{1,20}(?:\.[0-9]{1,20})?"  # longer: the reader reads it
_TIME = (
    rb"[1-9][0-9]{3}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    rb"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
)
#: One track point as the columnar read accepts it (each ``<`` counted, see the module doc).
_POINT = re.compile(
    rb'<trkpt lat="([^"]*)" lon="([^"]*)">' + _WS
    + rb"(?:<ele>(" + _NUMBER + rb")</ele>" + _WS + rb")?"
    + rb"(?:<time>(" + _TIME + rb")Z</time>" + _WS + rb")?"
    + rb"(?:<hdop>(" + _NUMBER.removeprefix(b"-?") + rb")</hdop>" + _WS + rb")?"
    + rb"</trkpt>"
)  # fmt: skip
#: The bytes a piece of points may hold (ASCII that can hide no markup from the pattern).
_PLAIN = b"\t\n\r" + bytes(range(0x20, 0x26)) + bytes(range(0x27, 0x7F))
_TEXT = rb"[\t\n\r\x20-\x25\x27-\x3b\x3d-\x5c\x5e-\x7e]*"
_PROLOG = re.compile(
    rb'(?:<\?xml[ \t\r\n]+version="1\.[01]"'
    rb'(?:[ \t\r\n]+encoding="(?:[Uu][Tt][Ff]-8|[Uu][Ss]-[Aa][Ss][Cc][Ii][Ii])")?'
    rb'(?:[ \t\r\n]+standalone="(?:yes|no)")?[ \t\r\n]*\?>)?' + _WS
    + rb'<gpx(?:[ \t\r\n]+[A-Za-z_][-A-Za-z0-9_.:]*="[^"<&]*")*' + _WS + rb">"
)  # fmt: skip
#: Markup between points: tracks, segments, the end, and short text elements.
_TOKEN = re.compile(
    _WS + rb"(?:<(trk|trkseg)>|</(trk|gpx)>|<(name|desc|cmt|src|type|number)>" + _TEXT + rb"</\3>)"
)
_JSONB_VERSION = b"\x01"
_NO_POINTS = (
    np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, np.int64),
    np.zeros(0),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class TrackPoints:
    """Kept track points of one segment, as arrays (NaN or ``NAT`` where a value is missing).

    ``time_us`` is microseconds since 1970 (UTC); ``hdop`` the points' only
    extension when present.
    """

    track: int
    segment: int
    seq: Ints
    lon: Floats
    lat: Floats
    ele: Floats
    time_us: Ints
    hdop: Floats

    def __len__(self) -> int:
        return len(self.seq)

    def extensions(self) -> list[str | None]:
        """Each point's extensions as the JSON the reader's path stores (``{"hdop":..}``)."""
        return [None if h != h else '{"hdop":' + repr(h) + "}" for h in self.hdop.tolist()]


Columns = tuple[Ints, Floats, Floats, Floats, Ints, Floats]  # seq, lon, lat, ele, time_us, hdop


class _Segment:
    """One segment being read: cleaned piece by piece, the cleaner's state carried over."""

    def __init__(self, track: int, segment: int, speed: dict[str, float]) -> None:
        self.track = track
        self.segment = segment
        self.speed = speed
        self.carry: Columns | None = None  # the last kept point, and a pending jump

    def clean(
        self,
        piece: Columns,
        dropped: Dropped,
        on_points: Callable[[TrackPoints], None],
        *,
        final: bool = False,
    ) -> None:
        """Clean the next piece's valid points; hand on the kept ones, count the rest."""
        carried = 0 if self.carry is None else len(self.carry[0])
        if self.carry is not None:
            piece = tuple(
                np.concatenate((old, new)) for old, new in zip(self.carry, piece, strict=True)
            )  # type: ignore[assignment]
        seq, lon, lat, ele, time_us, hdop = piece
        epoch = np.where(time_us == NAT, np.nan, time_us / 1e6)
        keep, drops, carry = clean_track(
            lat, lon, epoch, hdop, carried=carried, final=final, **self.speed
        )
        for reason, where in drops:
            if len(where):
                dropped.add_many(
                    "trkpt",
                    reason,
                    len(where),
                    index=int(seq[where[0]]),
                    track=self.track,
                    segment=self.segment,
                )
        self.carry = (seq[carry], lon[carry], lat[carry], ele[carry], time_us[carry], hdop[carry])
        if keep.any():
            on_points(
                TrackPoints(
                    self.track, self.segment, seq[keep], lon[keep], lat[keep], ele[keep],
                    time_us[keep], hdop[keep],
                )
            )  # fmt: skip


def read_columns(
    stream: IO[bytes] | io.RawIOBase,
    reader: GpxReader,
    dropped: Dropped,
    *,
    max_speed_mps: float,
    max_hdop: float,
    on_segment: Callable[[int, int], None],
    on_points: Callable[[TrackPoints], None],
) -> None:
    """Read one plain GPX document of tracks, counting into ``reader`` as it would.

    ``on_segment(track, segment)`` is called as a segment starts (as the
    reader yields its container), ``on_points`` with its kept points once it
    ended.  Dropped points are counted into ``dropped`` with their reasons.

    Raises
    ------
    Unusual
        For anything this read does not vouch for (see the module doc): the
        caller must forget what it was given and read the upload exactly.
    """
    if reader.max_depth < 5 or reader.max_point_elements < 3:
        raise Unusual("limits below a plain file's shape")
    buf = stream.read(CHUNK)
    head = _PROLOG.match(buf)
    if head is None:
        raise Unusual("not a plain GPX start")
    # the root's version, namespace and warnings, exactly as the reader reads them
    for _ in reader.read(io.BytesIO(head.group(0) + b"</gpx>")):
        pass
    if reader.versions == [] or reader.points_seen:
        raise Unusual("no root read")
    speed = {"max_speed_mps": max_speed_mps, "max_hdop": max_hdop}
    pos = head.end()
    level = "gpx"
    track = segment = -1
    current: _Segment | None = None
    eof = False
    while True:
        if level == "trkseg":
            end = buf.find(b"</trkseg>", pos)
            cut = end if end >= 0 else buf.rfind(b"<trkpt", pos)
            if cut > pos:
                assert current is not None
                piece = _points(buf, pos, cut, reader, dropped, track, segment)
                current.clean(piece, dropped, on_points)
                pos = cut
            if end >= 0:
                assert current is not None
                if current.carry is not None:
                    current.clean(_NO_POINTS, dropped, on_points, final=True)
                current = None
                pos = end + len(b"</trkseg>")
                level = "trk"
                continue
        else:
            token = _TOKEN.match(buf, pos)
            if token is not None and (token.end() < len(buf) or eof):
                pos = token.end()
                opened, closed = token.group(1), token.group(2)
                if opened == b"trk" and level == "gpx":
                    reader.tracks += 1
                    track, segment, level = reader.tracks - 1, -1, "trk"
                elif opened == b"trkseg" and level == "trk":
                    reader.segments += 1
                    segment += 1
                    level = "trkseg"
                    current = _Segment(track, segment, speed)
                    on_segment(track, segment)
                elif closed == b"trk" and level == "trk":
                    level = "gpx"
                elif closed == b"gpx" and level == "gpx":
                    rest = buf[pos:] + stream.read()
                    if rest.strip(b" \t\r\n"):
                        raise Unusual("something after the root")
                    return
                elif opened is not None or closed is not None:
                    raise Unusual("an element out of place")
                if reader.tracks + reader.segments > reader.max_points:
                    raise Unusual("too many containers")
                continue
        if eof:
            raise Unusual("the document ends early or has other markup")
        more = stream.read(CHUNK)
        eof = not more
        if len(buf) - pos > 4 * CHUNK:
            raise Unusual("a piece too long to read in columns")
        buf = buf[pos:] + more
        pos = 0


def _points(
    buf: bytes, start: int, end: int, reader: GpxReader, dropped: Dropped, track: int, segment: int
) -> Columns:
    """The valid points of ``buf[start:end]`` (points and blanks only) as columns."""
    found = _POINT.findall(buf, start, end)
    if buf[start:end].translate(None, _PLAIN) or buf.find(b"]]>", start, end) >= 0:
        raise Unusual("odd bytes in a segment")
    n = len(found)
    # lat, lon, ele, time, hdop: one contiguous column each (numpy's casts of strided
    # strings to times are not safe)
    table = np.array(found, "S").reshape(n, 5).T.copy()
    present = table[2:] != b""
    if buf.count(b"<", start, end) != 2 * (n + int(present.sum())):
        raise Unusual("a piece of a segment is not plain points")
    first = reader._index["trkpt"]
    reader._index["trkpt"] = first + n
    reader.points_seen += n
    if reader.points_seen > reader.max_points:
        raise Unusual("too many points")
    seq = np.arange(first, first + n, dtype=np.int64)
    lat, lat_ok = _coordinates(table[0], 90.0)
    lon, lon_ok = _coordinates(table[1], 180.0)
    valid = lat_ok & lon_ok
    if not valid.all():
        for i in np.flatnonzero(~valid).tolist():
            for column, name, bound in ((0, "lat", 90.0), (1, "lon", 180.0)):
                text = _attribute(found[i][column])
                _, why = _coordinate(text, name, bound)
                if why is not None:
                    dropped.add(
                        "trkpt", why, index=first + i, track=track, segment=segment, value=text
                    )
                    break
    ele = np.where(present[0], table[2], b"nan").astype(np.float64, copy=False)
    hdop = np.where(present[2], table[4], b"nan").astype(np.float64, copy=False)
    if np.isinf(ele).any() or np.isinf(hdop).any():
        raise Unusual("a number too large for a float")  # the reader leaves it out, with a note
    time_us = _times(table[3], present[1], valid, reader)
    return seq[valid], lon[valid], lat[valid], ele[valid], time_us[valid], hdop[valid]


def _attribute(value: bytes) -> str:
    """An attribute's value as XML normalises it (line ends and tabs become spaces)."""
    text = value.decode("ascii").replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("\n", " ").replace("\t", " ")


def _coordinates(
    texts: npt.NDArray[np.bytes_], bound: float
) -> tuple[Floats, npt.NDArray[np.bool_]]:
    """Coordinates and which are usable; plain decimals in bulk, anything else one by one."""
    items = texts.tolist()
    if len(items) and not b"".join(items).translate(None, b"-.0123456789"):
        # float() here, not numpy's cast: that one crashes on some bad strings
        try:
            values = np.fromiter(map(float, items), np.float64, len(items))
        except ValueError:
            pass
        else:
            return values, np.abs(values) <= bound
    values = np.zeros(len(items))
    ok = np.zeros(len(items), dtype=bool)
    for i, text in enumerate(items):
        value, why = _coordinate(_attribute(text), "", bound)
        values[i], ok[i] = value, why is None
    return values, ok


def _times(
    texts: npt.NDArray[np.bytes_],
    present: npt.NDArray[np.bool_],
    valid: npt.NDArray[np.bool_],
    reader: GpxReader,
) -> Ints:
    """Microseconds since 1970 (``NAT`` if none); impossible dates counted as the reader does.

    The pattern vouches for each field's range; numpy's cast reads them unless a day
    is past its month's end (it must not see one: its error path can crash).
    """
    if not present.any():
        return np.full(len(texts), NAT, dtype=np.int64)
    digits = texts.view(np.uint8).reshape(len(texts), texts.itemsize)[:, :10].astype(np.int64) - 48
    year = digits[:, 0] * 1000 + digits[:, 1] * 100 + digits[:, 2] * 10 + digits[:, 3]
    month, day = digits[:, 5] * 10 + digits[:, 6], digits[:, 8] * 10 + digits[:, 9]
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    last = np.where(month == 2, 28 + leap, 30 + ((month + (month > 7)) % 2))
    if not (present & (day > last)).any():
        return texts.astype("datetime64[us]").astype(np.int64, copy=False)
    # an impossible date such as 30 February: each time read as the reader reads it
    out = np.full(len(texts), NAT, dtype=np.int64)
    for i in np.flatnonzero(present).tolist():
        when, _ = parse_time(texts[i].decode("ascii") + "Z")
        if when is not None:
            out[i] = np.datetime64(when.replace(tzinfo=None), "us").astype(np.int64, copy=False)
        elif valid[i]:
            reader.bad_times += 1
    return out
