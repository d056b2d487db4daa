"""The GPX reader's fast read against its exact read: the same rows, or a fall-back."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest

from geo.core.uploads import spool_stream
from geo.demo.walks import gpx_bytes, phone_walk
from geo.traces.cleaning import Dropped
from geo.traces.gpx import GpxReader, Unusual
from geo.traces.ingest import TraceLimits, _parse
from tests.support.samples import SAMPLES

CORPUS = sorted(p for p in (SAMPLES / "gpx").iterdir() if p.suffix == ".gpx")


def stored(data: bytes, *, fast: bool, **limits: Any) -> tuple[Any, ...]:
    """Everything an ingest stores from ``data``: rows, dropped points, counts, warnings."""
    rows: list[tuple[Any, ...]] = []
    dropped = Dropped()
    body = spool_stream(io.BytesIO(data), limit=1 << 30)
    try:
        reader, stats = _parse(body, TraceLimits(**limits), dropped, rows.append, fast=fast)
    finally:
        body.close()
    counts = (reader.tracks, reader.segments, reader.routes, reader.points_seen, reader.versions)
    extent = (stats.points, stats.start, stats.end, stats.min_lon, stats.max_lat)
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
    if isinstance(exact, str):  # an error: only the exact read may answer it
        with pytest.raises(Unusual):
            stored(data, fast=True)
    else:
        assert stored(data, fast=True) == exact


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
