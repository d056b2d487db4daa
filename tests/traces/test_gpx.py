"""The GPX reader, upload spooling/decompression and the track cleaner, without HTTP."""

from __future__ import annotations

import bz2
import gzip
import io
import resource
import zipfile
from datetime import UTC, datetime, timedelta, timezone

import pytest

from geo.core.uploads import BodySpool, MultipartError, MultipartFile, TooLarge, members, sniff
from geo.traces.cleaning import Cleaner, Dropped
from geo.traces.gpx import BadPoint, Container, GpxReader, NotGpx, Point, TooManyPoints, XmlError
from tests.support.samples import SAMPLES


def read(data: bytes, **limits: int) -> tuple[GpxReader, list[object]]:
    reader = GpxReader(**limits)
    return reader, list(reader.read(io.BytesIO(data)))


def points(items: list[object]) -> list[Point]:
    return [item for item in items if isinstance(item, Point)]


def test_times_zones_fractions_and_odd_years() -> None:
    stamps = [
        "2024-05-01T08:00:00Z",
        "2024-05-01T08:00:00.1234567+01:15",
        "2024-05-01T08:00:00.5-05:00",
        "1234-01-01T00:00:00.123Z",
        "4096-12-31T23:59:59Z",
        "2024-05-01T08:00:00",
        "\n\t2024-05-01T08:00:00Z\n\t",
        "not a time",
    ]
    body = "".join(f'<wpt lat="1" lon="2"><time>{s}</time></wpt>' for s in stamps)
    reader, items = read(f"<gpx>{body}</gpx>".encode())
    times = [p.time for p in points(items)]
    assert times[0] == datetime(2024, 5, 1, 8, tzinfo=UTC)
    assert times[1] == datetime(
        2024, 5, 1, 8, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1, minutes=15))
    )
    assert times[2] is not None and times[2].utcoffset() == timedelta(hours=-5)
    assert times[3] is not None and times[3].year == 1234
    assert times[4] is not None and times[4].year == 4096
    assert times[5] == datetime(2024, 5, 1, 8, tzinfo=UTC)  # no zone: UTC, with a warning
    assert times[6] == times[0]
    assert times[7] is None
    assert any("no time zone" in w for w in reader.warnings)
    assert any("could not be read" in w for w in reader.warnings)


def test_extensions_garmin_and_plain() -> None:
    body = b"""<gpx xmlns="http://www.topografix.com/GPX/1/1"
      xmlns:gpxtpx="http://www.garmin.com/xmlschemas/TrackPointExtension/v1">
      <trk><trkseg>
        <trkpt lat="-1.3" lon="36.8"><ele>1701.5</ele><hdop>3.5</hdop><sat>7</sat><fix>3d</fix>
          <extensions><gpxtpx:TrackPointExtension><gpxtpx:hr>141</gpxtpx:hr>
            <gpxtpx:cad>80</gpxtpx:cad></gpxtpx:TrackPointExtension>
            <speed>1.4</speed><course>270</course><note>gate</note></extensions></trkpt>
      </trkseg></trk></gpx>"""
    _, items = read(body)
    (point,) = points(items)
    assert point.ele == 1701.5 and point.hdop == 3.5
    assert point.extensions == {
        "hdop": 3.5,
        "sat": 7.0,
        "fix": "3d",
        "hr": 141.0,
        "cad": 80.0,
        "speed": 1.4,
        "course": 270.0,
        "note": "gate",
    }


def test_gpx10_speed_course_and_structure() -> None:
    body = b"""<gpx version="1.0" xmlns="http://www.topografix.com/GPX/1/0">
      <wpt lat="1" lon="2"><name>Tap</name></wpt>
      <rte><rtept lat="1" lon="2"/><rtept lat="1.1" lon="2"/></rte>
      <trk><trkseg/><trkseg><trkpt lat="1" lon="2"><speed>2.5</speed><course>90</course>
      </trkpt></trkseg></trk><trk/></gpx>"""
    reader, items = read(body)
    kinds = [(i.kind, i.track, i.segment) for i in items if isinstance(i, Container)]
    assert kinds == [
        ("rte", 0, None),
        ("trk", 0, None),
        ("trkseg", 0, 0),
        ("trkseg", 0, 1),
        ("trk", 1, None),
    ]
    found = points(items)
    assert [p.kind for p in found] == ["wpt", "rtept", "rtept", "trkpt"]
    assert found[0].name == "Tap"
    assert found[3].segment == 1 and found[3].extensions == {"speed": 2.5, "course": 90.0}
    assert (reader.tracks, reader.segments, reader.routes) == (2, 2, 1)


@pytest.mark.parametrize(
    ("attrs", "reason"),
    [
        ('lat="undefined" lon="1"', "lat not numeric"),
        ('lat="" lon="1"', "lat not numeric"),
        ('lat="1_0" lon="1"', "lat not numeric"),
        ('lat="nan" lon="1"', "lat not finite"),
        ('lat="1" lon="inf"', "lon not finite"),
        ('lat="-90.0001" lon="1"', "lat out of range"),
        ('lat="1" lon="180.5"', "lon out of range"),
        ('lon="1"', "lat missing"),
        ('lat="1"', "lon missing"),
    ],
)
def test_bad_coordinates(attrs: str, reason: str) -> None:
    _, items = read(f"<gpx><wpt {attrs}/><wpt lat='90' lon='-180'/></gpx>".encode())
    bad = [i for i in items if isinstance(i, BadPoint)]
    assert [b.reason for b in bad] == [reason]
    assert [(p.lat, p.lon) for p in points(items)] == [(90.0, -180.0)]


def test_encodings_bom_and_prefixes() -> None:
    latin1 = (
        '<?xml version="1.0" encoding="ISO-8859-1"?>'
        '<gpx><wpt lat="1" lon="2"><name>Caf\xe9 Mathare</name></wpt></gpx>'
    )
    assert points(read(latin1.encode("latin-1"))[1])[0].name == "Café Mathare"
    bom = b"\xef\xbb\xbf" + b'<gpx><wpt lat="1" lon="2"><name>Jua Kali</name></wpt></gpx>'
    assert points(read(bom)[1])[0].name == "Jua Kali"
    utf16 = '<?xml version="1.0" encoding="UTF-16"?><gpx><wpt lat="1" lon="2"/></gpx>'.encode(
        "utf-16"
    )
    assert len(points(read(utf16)[1])) == 1
    prefixed = (
        b'<g:gpx xmlns:g="http://www.topografix.com/GPX/1/1"><g:trk><g:trkseg>'
        b'<g:trkpt lat="1" lon="2"/></g:trkseg></g:trk></g:gpx>'
    )
    reader, items = read(prefixed)
    assert len(points(items)) == 1 and reader.versions == ["1.1"] and not reader.warnings


def test_foreign_namespace_is_a_warning_and_other_roots_are_not_gpx() -> None:
    reader, items = read(b'<gpx xmlns="http://example.com/x"><wpt lat="1" lon="2"/></gpx>')
    assert len(points(items)) == 1 and "namespace" in reader.warnings[0]
    with pytest.raises(NotGpx, match="<notgpx>"):
        read(b'<notgpx xmlns="http://www.topografix.com/GPX/1/1"><wpt lat="1" lon="2"/></notgpx>')


def test_xml_errors_have_line_and_column() -> None:
    with pytest.raises(XmlError) as caught:
        read(b"<gpx>\n<wpt lat='1' lon='2'>\n<name>x</wpt></gpx>")
    assert caught.value.line == 3 and caught.value.column is not None
    assert caught.value.status == 400


def test_doctype_entities_and_depth_refused() -> None:
    for body in (
        b'<!DOCTYPE gpx [<!ENTITY a "aaaaaaaaaa">]>'
        b'<gpx><wpt lat="1" lon="2"><name>&a;</name></wpt></gpx>',
        b'<!DOCTYPE gpx SYSTEM "http://example.com/gpx.dtd"><gpx/>',
    ):
        with pytest.raises(XmlError, match="DOCTYPE"):
            read(body)
    with pytest.raises(XmlError, match="depth"):
        read(b"<gpx>" + b"<e>" * 70 + b"</e>" * 70 + b"</gpx>", max_depth=64)
    with pytest.raises(XmlError, match="child elements"):
        read(b'<gpx><wpt lat="1" lon="2">' + b"<x/>" * 50 + b"</wpt></gpx>", max_point_elements=20)


def test_point_limit() -> None:
    body = b"<gpx>" + b'<wpt lat="1" lon="2"/>' * 6 + b"</gpx>"
    assert len(points(read(body, max_points=6)[1])) == 6
    with pytest.raises(TooManyPoints) as caught:
        read(body, max_points=5)
    assert caught.value.status == 413


def test_memory_stays_flat_on_a_large_file() -> None:
    """400,000 points (about 30 MB) parse without the peak RSS growing with the file."""

    def stream(n: int) -> io.BytesIO:
        rows = b"".join(
            b'<trkpt lat="-1.%06d" lon="36.%06d"><ele>1700</ele></trkpt>' % (i, i) for i in range(n)
        )
        return io.BytesIO(b"<gpx><trk><trkseg>" + rows + b"</trkseg></trk></gpx>")

    data = stream(400_000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    count = sum(1 for item in GpxReader().read(data) if isinstance(item, Point))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert count == 400_000
    assert grown_mb < 25, f"peak RSS grew by {grown_mb:.0f} MB while parsing"


# -------------------------------------------------------------------- uploads
def test_spool_refuses_past_the_limit() -> None:
    spool = BodySpool(limit=10)
    spool.write(b"12345")
    with pytest.raises(TooLarge):
        spool.write(b"678901")


def test_sniff_and_members() -> None:
    gpx = b'<gpx><wpt lat="1" lon="2"/></gpx>'
    assert sniff(io.BytesIO(gpx)) == "plain"
    for packed, kind in ((gzip.compress(gpx), "gzip"), (bz2.compress(gpx), "bzip2")):
        file = io.BytesIO(packed)
        assert sniff(file) == kind
        (member,) = members(file, limit=1000)
        assert member.stream.read() == gpx
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.gpx", gpx)
        archive.writestr("b.gpx.gz", gzip.compress(gpx))
        archive.writestr("folder/", b"")
    buffer.seek(0)
    found = [(m.name, m.stream.read()) for m in members(buffer, limit=1000)]
    assert found == [("a.gpx", gpx), ("b.gpx.gz", gpx)]


def test_decompression_bomb_stops_at_the_limit_quickly() -> None:
    bomb = io.BytesIO()
    with gzip.GzipFile(fileobj=bomb, mode="wb") as out:
        for _ in range(32):
            out.write(b"\0" * (32 * 1024 * 1024))  # 1 GB of zeros, ~1 MB compressed
    compressed = bomb.tell()
    bomb.seek(0)
    (member,) = members(bomb, limit=8 * 1024 * 1024)
    with pytest.raises(TooLarge, match="decompressed"):
        member.stream.drain()
    # it stopped after about 8 MB of output, long before the end of the 1 GB stream
    assert bomb.tell() < compressed / 4


def test_zip_member_limit_is_shared() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(4):
            archive.writestr(f"{i}.gpx", b" " * 400)
    buffer.seek(0)
    with pytest.raises(TooLarge):
        for member in members(buffer, limit=1000):
            member.stream.drain()


def test_multipart_extracts_the_file_field() -> None:
    boundary = "XyZ"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="w.gpx"\r\n'
        "Content-Type: application/gpx+xml\r\n\r\n<gpx/>\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    extractor = MultipartFile(
        f"multipart/form-data; boundary={boundary}",
        field="file",
        spool=BodySpool(limit=100),
        body_limit=10_000,
    )
    for i in range(0, len(body), 7):
        extractor.feed(body[i : i + 7])
    result = extractor.finish()
    assert result.file.read() == b"<gpx/>" and extractor.filename == "w.gpx"
    with pytest.raises(MultipartError):
        MultipartFile("multipart/form-data", field="file", spool=BodySpool(limit=1), body_limit=1)


# -------------------------------------------------------------------- cleaner
def _pt(i: int, lat: float, second: int | None, hdop: float | None = None) -> Point:
    when = datetime(2024, 5, 1, 8, 0, second, tzinfo=UTC) if second is not None else None
    return Point("trkpt", i, 0, 0, lat, 36.8, None, when, None, None, hdop,
                 when.timestamp() if when else None)  # fmt: skip


def test_cleaner_keeps_a_sustained_jump_and_drops_a_spike() -> None:
    dropped = Dropped()
    cleaner = Cleaner(max_speed_mps=60, max_hdop=20, dropped=dropped)
    walk = [_pt(0, -1.3, 0), _pt(1, -1.30001, 1), _pt(2, -1.2, 2), _pt(3, -1.30003, 3)]
    kept = [p.index for p in walk for p in cleaner.push(p)]
    cleaner.end_segment()
    assert kept == [0, 1, 3] and dropped.total() == 1
    # a real move (e.g. after losing the fix) stays: everything after it agrees with it
    dropped = Dropped()
    cleaner = Cleaner(max_speed_mps=60, max_hdop=20, dropped=dropped)
    moved = [_pt(0, -1.3, 0), _pt(1, -1.2, 1), _pt(2, -1.20001, 2), _pt(3, -1.20002, 3)]
    kept = [p.index for p in moved for p in cleaner.push(p)]
    cleaner.end_segment()
    assert kept == [0, 1, 2, 3] and dropped.total() == 0
    # no times: never judged on speed
    cleaner = Cleaner(max_speed_mps=60, max_hdop=20, dropped=Dropped())
    timeless = [_pt(0, -1.3, None), _pt(1, -1.2, None), _pt(2, -1.3, None)]
    assert [p.index for p in timeless for p in cleaner.push(p)] == [0, 1, 2]


def test_real_files_parse() -> None:
    raw = (SAMPLES / "gpx" / "georust__garmin-activity.gpx").read_bytes()
    _, items = read(raw)
    found = points(items)
    assert len(found) == 988
    assert found[0].extensions and "hr" in found[0].extensions


def test_extensions_json_reads_back_as_json_dumps_would_write_it() -> None:
    import json
    import random

    from geo.traces.gpx import NUMERIC_FIELDS
    from geo.traces.ingest import extensions_json

    rng = random.Random(5)
    names = [*sorted(NUMERIC_FIELDS), "fix", "speed", 'weird"key', "ünï"]
    for _ in range(2_000):
        ext: dict[str, object] = {}
        for name in rng.sample(names, rng.randint(1, 4)):
            roll = rng.random()
            ext[name] = (
                rng.uniform(-1e6, 1e6) if roll < 0.6
                else float(rng.randint(-5, 5)) if roll < 0.8
                else rng.choice(["3d", 'a "b"', "ünï", "1e999"])
            )  # fmt: skip
        text = extensions_json(ext)
        assert json.loads(text) == ext
        assert text == json.dumps(ext, separators=(",", ":"))
