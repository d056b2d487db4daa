"""The GPX reader's fast read against its exact read: the same rows, or a fall-back."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest

from geo.core.uploads import spool_stream
from geo.demo.walks import gpx_bytes, phone_walk
from geo.traces import columns
from geo.traces.cleaning import Dropped
from geo.traces.gpx import GpxReader, Unusual
from geo.traces.ingest import TraceLimits, _parse, _parse_columns, point_rows
from tests.support.samples import SAMPLES

CORPUS = sorted(p for p in (SAMPLES / "gpx").iterdir() if p.suffix == ".gpx")


def stored(data: bytes, *, fast: bool, columns: bool = False, **limits: Any) -> tuple[Any, ...]:
    """Everything an ingest stores from ``data``: rows, dropped points, counts, warnings.

    ``columns``: by the columnar read (track points as the rows they become).
    """
    rows: list[tuple[Any, ...]] = []
    dropped = Dropped()
    body = spool_stream(io.BytesIO(data), limit=1 << 30)
    try:
        if columns:
            reader, stats = _parse_columns(
                body,
                TraceLimits(**limits),
                dropped,
                rows.append,
                lambda points: rows.extend(point_rows(points)),
            )
        else:
            reader, stats = _parse(body, TraceLimits(**limits), dropped, rows.append, fast=fast)
    finally:
        body.close()
    counts = (reader.tracks, reader.segments, reader.routes, reader.points_seen, reader.versions)
    extent = (
        stats.points,
        stats.start,
        stats.end,
        stats.min_lon,
        stats.max_lat,
        stats.max_lon,
        stats.min_lat,
        stats.kept,
    )
    return rows, dropped.as_list(), counts, extent, reader.warnings


def exact_or_error(data: bytes, **limits: Any) -> tuple[Any, ...] | str:
    try:
        return stored(data, fast=False, **limits)
    except Exception as exc:  # the exact read's answer, whatever it is
        return repr(exc)


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_corpus_fast_read_stores_what_the_exact_read_stores(path: Any) -> None:
    data = path.read_bytes()
    exact = exact_or_error(data)
    for way in ({"fast": True}, {"fast": True, "columns": True}):
        if isinstance(exact, str):  # an error: only the exact read may answer it
            with pytest.raises(Unusual):
                stored(data, **way)
        else:
            try:
                assert stored(data, **way) == exact
            except Unusual:
                assert way.get("columns")  # the columnar read may always decline


def _walk_with_bad_points() -> bytes:
    """A phone walk (spikes, duplicates, pauses, poor fixes) with bad coordinates and segments."""
    text = gpx_bytes(phone_walk(3_000, seed=5, spike_every=200), segment_points=1_000).decode()
    bad = iter(["x", "NaN", "91", "", "1_0", "inf"])
    text = re.sub(r'lat="[^"]*"', lambda m: m.group(0) if hash(m.start()) % 97 else
                  f'lat="{next(bad, "-95")}"', text)  # fmt: skip
    return text.replace("<trkseg>", "<trkseg><extensions><note>seg</note></extensions>", 1).encode()


def test_walk_fast_read_keeps_the_same_points_and_reasons() -> None:
    data = _walk_with_bad_points()
    exact = stored(data, fast=False, max_speed_mps=20.0)
    rows, dropped, *_ = exact
    reasons = {group["reason"] for group in dropped}
    # the walk does exercise the cleaner and the coordinate checks
    assert {"speed jump over 20 m/s", "duplicate of the previous point"} <= reasons
    assert any(reason.startswith("lat ") for reason in reasons)
    assert sum(1 for row in rows if row[0] == "trkseg") == 3
    assert stored(data, fast=True, max_speed_mps=20.0) == exact


def _plain_walk(n: int, seed: int) -> bytes:
    """A phone walk in the columnar read's plain form, with everything it must get right.

    Spikes, duplicates, pauses and poor fixes (the walk's own); bad coordinates;
    points without elevation, time or hdop; fractions of seconds; an impossible
    date; two tracks, a named one, an empty segment; CRLF line ends in places.
    """
    text = gpx_bytes(phone_walk(n, seed=seed, spike_every=150), segment_points=n // 3).decode()
    points = text.split("<trkpt ")
    bad = iter(["x", "NaN", "91", "", "1_0", "inf", " 12.5", "1e1", "-", "1.2.3", "180.5"])
    for i in range(1, len(points)):
        point = points[i]
        if i % 37 == 0:
            point = re.sub(r"<ele>[^<]*</ele>", "", point)
        if i % 53 == 0:
            point = re.sub(r"<time>[^<]*</time>", "", point)
        if i % 41 == 0:
            point = re.sub(r"<hdop>[^<]*</hdop>", "", point)
        if i % 29 == 0:
            point = point.replace("Z</time>", ".25Z</time>")
        if i % 97 == 0:
            attribute = "lat" if i % 2 else "lon"
            point = re.sub(attribute + r'="[^"]*"', f'{attribute}="{next(bad, "-95")}"', point)
        if i % 61 == 0:
            point = point.replace("\n", "\r\n")
        points[i] = point
    text = "<trkpt ".join(points)
    text = re.sub(r"<time>\d{4}-\d\d-\d\dT", "<time>2024-02-30T", text, count=1)
    text = text.replace("</trkseg><trkseg>", "</trkseg></trk>\n<trk><name>second</name><trkseg>", 1)
    return text.replace("</trk></gpx>", "<trkseg></trkseg></trk></gpx>").encode()


@pytest.mark.parametrize("chunk", [columns.CHUNK, 1_500], ids=["whole", "pieces"])
@pytest.mark.parametrize("seed", [5, 6])
def test_columnar_read_keeps_the_same_points_and_reasons(
    seed: int, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also in pieces of about a dozen points: the cleaner's state (the last kept point,
    a pending jump) carries from piece to piece."""
    monkeypatch.setattr(columns, "CHUNK", chunk)
    data = _plain_walk(3_000, seed)
    exact = stored(data, fast=False, max_speed_mps=20.0)
    rows, dropped, counts, _, warnings = exact
    reasons = {group["reason"] for group in dropped}
    # the walk does exercise the cleaner, the coordinate checks, the tracks and the times
    assert {"speed jump over 20 m/s", "duplicate of the previous point", "hdop over 20"} <= reasons
    assert {"lat not numeric", "lon not numeric", "lat out of range"} & reasons
    assert counts[:2] == (2, 4)
    assert any("could not be read" in warning for warning in warnings)
    assert any(row[6] is None for row in rows if row[0] == "trkpt")
    assert stored(data, fast=False, columns=True, max_speed_mps=20.0) == exact


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(("<trk>", "<trk><!-- a comment -->"), id="comment"),
        pytest.param(("<ele>", "<ele><![CDATA[1]]>"), id="cdata"),
        pytest.param(('lat="', "lat='1' x=\""), id="single-quotes"),
        pytest.param(("<hdop>", "<sat>4</sat><hdop>"), id="other-child"),
        pytest.param(("<ele>", "<gpx:ele>"), id="prefix"),
        pytest.param(("Z</time>", "+03:00</time>"), id="offset"),
        pytest.param(("</trk>", "</trk><wpt lat='1' lon='2'/>"), id="waypoint"),
        pytest.param(("<trkseg>", "<trkseg><extensions/>"), id="extensions"),
        pytest.param(("<ele>", "<ele>&#49;"), id="entity"),
        pytest.param(("<ele>1", "<ele>\u00e91"), id="not-ascii"),
        pytest.param(("</trkpt>", "</trkpt"), id="not-well-formed"),
        pytest.param(("</gpx>", "</gpx><gpx>"), id="after-root"),
        pytest.param(("<ele>", "<ele>" + "9" * 400), id="elevation-overflows"),
    ],
)
def test_columnar_read_declines_what_it_cannot_vouch_for(change: tuple[str, str]) -> None:
    data = gpx_bytes(phone_walk(50, seed=2)).decode().replace(*change, 1).encode()
    with pytest.raises(Unusual):
        stored(data, fast=False, columns=True)


def test_columnar_read_of_bare_points() -> None:
    """Points without children and with short coordinates read as the exact read reads them."""
    points = '<trkpt lat="1" lon="2"></trkpt><trkpt lat="1" lon="3"></trkpt>'
    data = f'<gpx version="1.1"><trk><trkseg>{points}</trkseg></trk></gpx>'.encode()
    assert stored(data, fast=False, columns=True) == stored(data, fast=False)


def test_columnar_read_declines_past_the_point_limit() -> None:
    data = gpx_bytes(phone_walk(50, seed=2))
    assert stored(data, fast=False, columns=True, max_points=50)[2][3] == 50
    with pytest.raises(Unusual):
        stored(data, fast=False, columns=True, max_points=49)


DEEP = "".join(f"<d{i}>" for i in range(70)) + "".join(f"</d{i}>" for i in reversed(range(70)))
POINT = '<trkpt lat="1" lon="2"><ele>3</ele>{}</trkpt>'
TRACK = "<trk><trkseg>{}</trkseg></trk>"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(f"<metadata>{DEEP}</metadata>" + TRACK.format(POINT.format("")), id="deep"),
        pytest.param(TRACK.format(POINT.format(f"<extensions>{DEEP}</extensions>")), id="deep-pt"),
        pytest.param(
            TRACK.format(f"<extensions>{DEEP}</extensions>" + POINT.format("")), id="deep-seg"
        ),
        pytest.param(TRACK.format(POINT.format("<x/>" * 1_001)), id="point-elements"),
        pytest.param(
            TRACK.format(POINT.format("<extensions>" + "<x/>" * 1_001 + "</extensions>")),
            id="point-descendants",
        ),
        pytest.param('<trk><trkpt lat="1" lon="2"/></trk>', id="trkpt-outside-trkseg"),
        pytest.param(TRACK.format(POINT.format(POINT.format(""))), id="point-in-point"),
        pytest.param("<metadata><gpx/></metadata>", id="nested-gpx"),
        pytest.param(TRACK.format(POINT.format("") * 3), id="too-many-points"),
        pytest.param(TRACK.format(POINT.format("<ele>")), id="not-well-formed"),
    ],
)
def test_fast_read_falls_back_where_the_exact_read_differs(body: str) -> None:
    data = f'<gpx version="1.1" xmlns="http://www.topografix.com/GPX/1/1">{body}</gpx>'.encode()
    with pytest.raises(Unusual):
        list(GpxReader(max_points=2).read(io.BytesIO(data), fast=True))


@pytest.mark.parametrize(
    "prologue",
    ['<!DOCTYPE gpx [<!ENTITY a "b">]>', "<notgpx/>", ""],
    ids=["doctype", "other-root", "empty"],
)
def test_fast_read_leaves_refusals_to_the_exact_read(prologue: str) -> None:
    data = prologue.encode()
    if "DOCTYPE" in prologue:
        data += b"<gpx><wpt lat='1' lon='2'/></gpx>"
    with pytest.raises(Unusual):
        list(GpxReader().read(io.BytesIO(data), fast=True))


HOSTILE_NUMBERS = ["1e5x", " 1", "1 ", "nan", "NaN", "inf", "-inf", "1_0", "", "9" * 25,
                   "1." + "5" * 25, "+1", "1.", ".5", "-", "--1", "0x1F", "1e3", "\uff11", "-0",
                   "00012.50", "1.25"]  # fmt: skip
HOSTILE_TIMES = [
    t + "Z"
    for t in (
        "2024-05-02T08:00:01.1234567",
        "2024-13-01T00:00:00",
        "0999-01-01T00:00:00",
        "2024-05-02T24:00:00",
        "2024-05-02T08:00:60",
        "2024-05-02 08:00:01",
        "2024-05-02T08:00:01.",
        " 2024-05-02T08:00:01",
        "2024-02-30T08:00:00",
        "2024-05-02T08:00:01.25",
        "2024-05-02T8:00:01",
        "",
    )
]
HOSTILE_TIMES += ["2024-05-02T08:00:01", "2024-05-02T08:00:01+00:00", "nan"]  # fmt: skip


@pytest.mark.parametrize("child", ["ele", "hdop", "time"])
def test_columnar_read_of_hostile_values(child: str) -> None:
    """Odd numbers and times in a child: the columnar read stores what the exact read
    stores, or declines; never another value, reason or error."""
    walk = gpx_bytes(phone_walk(30, seed=3)).decode()
    read = []
    for value in HOSTILE_TIMES if child == "time" else HOSTILE_NUMBERS:
        data = re.sub(f"<{child}>[^<]*<", f"<{child}>{value}<", walk, count=1).encode("utf-8")
        exact = exact_or_error(data)
        try:
            columnar: Any = stored(data, fast=False, columns=True)
        except Unusual:
            continue
        assert columnar == exact, (child, value)
        read.append(value)
    assert read  # some odd-looking values ("-0", "00012.50", a fraction of a second) are plain
