"""The printable atlas: opens, holds a block's numbers and the profile's counts, no names."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import shapely
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Connection, text

from app.main import create_app
from geo.atlas.data import AtlasData, Structure
from geo.atlas.maps import FACILITY_COLOURS, FACILITY_STYLE, USE_COLOURS, MapLayers, render_window
from geo.core.settings import Settings
from geo.demo.generator import generate
from geo.demo.loader import load
from geo.layers.registry import ENUMS
from tests.profiles.conftest import (
    E0,
    N0,
    SECRET_NAME,
    SECRET_PHONE,
    Kisima,
    backdate,
    insert_settlement,
    insert_structure,
)
from tests.support.db import BoundDatabase

Headers = Callable[..., dict[str, str]]

needs_poppler = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("pdftotext", "pdftoppm", "pdfimages")),
    reason="pdftotext/pdftoppm/pdfimages missing: install the Debian package poppler-utils",
)


def _atlas(
    client: TestClient, sid: int, headers: dict[str, str], path: Path, **params: str
) -> Path:
    answer = client.get(f"/settlements/{sid}/atlas.pdf", headers=headers, params=params)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/pdf"
    assert "attachment" in answer.headers["content-disposition"]
    path.write_bytes(answer.content)
    return path


def _pages(pdf: Path) -> list[str]:
    out = subprocess.run(
        ["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True, text=True
    ).stdout
    return out.split("\f")[:-1]


def _png_pages(pdf: Path) -> list[Path]:
    prefix = pdf.with_suffix("")
    subprocess.run(["pdftoppm", "-r", "60", "-png", str(pdf), str(prefix)], check=True)
    return sorted(pdf.parent.glob(f"{prefix.name}-*.png"))


@needs_poppler
def test_atlas_pages_numbers_counts_and_nothing_personal(
    client: TestClient, token_for: Headers, kisima: Kisima, tmp_path: Path
) -> None:
    planner = token_for("planner")
    pdf = _atlas(client, kisima.settlement, planner, tmp_path / "kisima.pdf")
    pages = _pages(pdf)
    # cover, then per block one map page and one sheet
    assert len(pages) == 5
    today = f"{datetime.now(UTC):%Y-%m-%d}"
    for k, page in enumerate(pages, start=1):
        # every page says what it is, where its data comes from and of when
        assert f"Makazi — Kisima, data as of {today}" in page
        assert f"printed {today}" in page
        assert "Source: Makazi database · prepared for role planner" in page
        assert "all records · all counts shown" in page
        assert f"page {k} of 5" in page
    # every printed map (the cover's too) has a north arrow and a scale bar ticked 0, middle, end
    maps = [k for k, page in enumerate(pages, start=1) if k == 1 or ": map" in page]
    assert len(maps) == 3
    for k in maps:
        assert re.search(r"\bN\s*↑", pages[k - 1]), k
        ticks = _scale_ticks(pdf, k)
        (zero, _z), (middle, x_middle), (end, x_end) = ticks
        assert (zero, middle * 2) == (0, end) and end > 0, ticks
        assert x_middle == pytest.approx((ticks[0][1] + x_end) / 2, abs=0.6), ticks
        scale = re.search(r"scale 1:(\d+)", pages[k - 1])
        if scale:  # the bar is as long on paper as its metres at the page's scale
            bar_mm = (x_end - ticks[0][1]) / 72 * 25.4
            assert bar_mm == pytest.approx(end * 1000 / int(scale[1]), rel=0.03), ticks
    # each map page carries a key map of the settlement beside its title: one image, reused
    images = _image_objects(pdf)
    assert [len(images[k]) for k in maps] == [1, 2, 2]
    assert images[maps[1]][1] == images[maps[2]][1] != images[1][0]
    # a block in one long row is printed across a landscape page, sheets stay portrait
    sizes = [Image.open(png).size for png in _png_pages(pdf)]
    for k, page in enumerate(pages, start=1):
        turned = k in maps[1:]
        assert ("on A4 landscape" in page) == turned, k
        assert (sizes[k - 1][0] > sizes[k - 1][1]) == turned, (k, sizes)
    # the legend names every use and facility type the map colours
    legend = " ".join(pages[maps[1] - 1].split())
    for name in (*USE_COLOURS, *FACILITY_COLOURS):
        assert name.replace("_", " ") in legend, name
    cover = pages[0]
    profile = client.get(f"/settlements/{kisima.settlement}/profile", headers=planner).json()
    for name in ("structures", "households", "people_counted", "water_points"):
        line = next(line for line in cover.splitlines() if name.replace("_", " ") in line)
        assert str(profile["fields"][name]["value"]) in line, (name, line)
    sheet = next(page for page in pages if "Block KS-02: verification sheet" in page)
    for tid in kisima.blocks["KS-02"]:
        assert kisima.numbers[tid] in sheet
    assert not any(kisima.numbers[tid] in sheet for tid in kisima.blocks["KS-01"])
    map_page = next(page for page in pages if "Block KS-01: map" in page)
    for number in ("001", "008"):
        assert number in map_page
    everything = "\n".join(pages)
    assert SECRET_NAME not in everything and SECRET_PHONE not in everything
    assert "Wanjiru" not in everything and "0999" not in everything


@needs_poppler
def test_suppressed_counts_print_as_suppressed(
    client: TestClient, token_for: Headers, tiny: int, tmp_path: Path
) -> None:
    pages = _pages(_atlas(client, tiny, token_for("viewer"), tmp_path / "tiny.pdf"))
    cover = pages[0]
    assert "prepared for role viewer" in cover
    households = next(line for line in cover.splitlines() if "households" in line)
    assert "suppressed" in households
    assert "TN-01-1" in "\n".join(pages)  # a sheet still lists the numbers
    assert all("counts below 5 hidden" in page for page in pages)
    assert not any("verified structures" in page for page in pages)
    verified = _atlas(client, tiny, token_for("viewer"), tmp_path / "v.pdf", verified="true")
    assert all("verified structures and households only" in page for page in _pages(verified))


def test_atlas_needs_a_token_and_a_settlement(
    client: TestClient, token_for: Headers, kisima: Kisima
) -> None:
    assert client.get(f"/settlements/{kisima.settlement}/atlas.pdf").status_code == 401
    missing = client.get("/settlements/999999/atlas.pdf", headers=token_for("viewer"))
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    bad = client.get(
        f"/settlements/{kisima.settlement}/atlas.pdf",
        params={"paper": "A5"},
        headers=token_for("viewer"),
    )
    assert bad.status_code == 400 and "paper" in bad.text


@needs_poppler
def test_as_of_before_an_edit_shows_the_old_boundary_and_changes(
    client: TestClient,
    connection: Connection,
    token_for: Headers,
    kisima: Kisima,
    tmp_path: Path,
) -> None:
    backdate(connection, 30)  # mapped a month ago
    # now the boundary grows to take in a new row of structures, one old structure goes
    connection.execute(
        text(
            "UPDATE settlements SET geom = ST_Multi(ST_Transform(ST_MakeEnvelope("
            ":x0, :y0, :x1, :y1, 32737), 4326)) WHERE id = :id"
        ),
        {
            "x0": 262_000.0,
            "y0": 9_858_000.0,
            "x1": 262_200.0,
            "y1": 9_858_200.0,
            "id": kisima.settlement,
        },
    )
    insert_structure(connection, "KS-03-001", "residential", 20, 150)
    gone = kisima.blocks["KS-01"][1]
    connection.execute(
        text("UPDATE structures SET deleted_at = now() WHERE id = :id"), {"id": gone}
    )
    then = connection.execute(text("SELECT (now() - interval '10 days')::date")).scalar_one()
    viewer = token_for("viewer")
    old = client.get(
        f"/settlements/{kisima.settlement}/summary", params={"as_of": str(then)}, headers=viewer
    ).json()
    new = client.get(f"/settlements/{kisima.settlement}/summary", headers=viewer).json()
    assert old["area_m2"] == pytest.approx(24_000, rel=0.01)
    assert new["area_m2"] == pytest.approx(40_000, rel=0.01)
    assert (old["structures"], new["structures"]) == (16, 16)
    planner = token_for("planner")
    pages = _pages(
        _atlas(client, kisima.settlement, planner, tmp_path / "then.pdf", as_of=str(then))
    )
    assert f"data as of {then}" in pages[0]
    assert not any("KS-03" in page for page in pages)
    assert any(kisima.numbers[gone] in page for page in pages)
    pages = _pages(
        _atlas(client, kisima.settlement, planner, tmp_path / "now.pdf", since=str(then))
    )
    changes = pages[1]
    assert "Changes since" in changes
    assert "1 structures added, 1 removed" in changes
    assert "KS-03-001" in changes and kisima.numbers[gone] in changes


@needs_poppler
def test_dense_demo_settlement_labels_every_number(
    client: TestClient, connection: Connection, token_for: Headers, tmp_path: Path
) -> None:
    load(connection, generate(1200, seed=3))
    sid, name = connection.execute(
        text("SELECT id, name FROM settlements ORDER BY id DESC LIMIT 1")
    ).one()
    out = Path(os.environ.get("MAKAZI_ATLAS_LOOK", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    pdf = _atlas(client, sid, token_for("planner"), out / "demo.pdf", paper="A4")
    pages = _pages(pdf)
    numbers = (
        connection.execute(
            text("SELECT structure_number FROM structures WHERE settlement_id = :id"), {"id": sid}
        )
        .scalars()
        .all()
    )
    text_all = "\n".join(pages)
    assert all(number in text_all for number in numbers)
    assert name in pages[0]


def _words(pdf: Path, page: int) -> list[tuple[str, float, float, float, float]]:
    html = subprocess.run(
        ["pdftotext", "-bbox", "-f", str(page), "-l", str(page), str(pdf), "-"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    pattern = re.compile(
        r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">([^<]*)</word>'
    )
    return [(w, float(a), float(b), float(c), float(d)) for a, b, c, d, w in pattern.findall(html)]


def _overlapping(words: list[tuple[str, float, float, float, float]]) -> list[tuple[str, str]]:
    """Pairs of words whose boxes overlap (more than 0.3 pt both ways)."""
    return [
        (t, u)
        for k, (t, x0, y0, x1, y1) in enumerate(words)
        for u, a0, b0, a1, b1 in words[k + 1 :]
        if min(x1, a1) - max(x0, a0) > 0.3 and min(y1, b1) - max(y0, b0) > 0.3
    ]


def _scale_ticks(pdf: Path, page: int) -> list[tuple[float, float]]:
    """The scale bar's tick labels on ``page``: (metres, x of the label's centre in pt).

    The three numbers printed on one line just before the bar's unit ``m``.
    """
    words = _words(pdf, page)
    unit = next(w for w in words if w[0] == "m")
    line = [
        w
        for w in words
        if abs(w[2] - unit[2]) < 1 and w[3] < unit[1] and re.fullmatch(r"[\d,.]+", w[0])
    ]
    line.sort(key=lambda w: w[1])
    return [(float(w[0].replace(",", "")), (w[1] + w[3]) / 2) for w in line[-3:]]


def _image_objects(pdf: Path) -> dict[int, list[str]]:
    """PDF object ids of the images drawn on each page, in drawing order (``pdfimages``)."""
    listing = subprocess.run(
        ["pdfimages", "-list", str(pdf)], check=True, capture_output=True, text=True
    ).stdout
    objects: dict[int, list[str]] = {}
    for line in listing.splitlines()[2:]:
        cells = line.split()
        objects.setdefault(int(cells[0]), []).append(cells[10])
    return objects


def _map_js_colours(name: str, page: str = "map") -> dict[str, str]:
    """The ``var NAME = {key: "#hex", ...}`` palette of a page's script (the web map's)."""
    script = (Path(__file__).parents[2] / "app" / "static" / page / f"{page}.js").read_text()
    body = re.search(rf"var {name} = \{{(.*?)\}};", script, re.DOTALL)
    assert body, name
    return dict(re.findall(r'(\w+):\s*"(#[0-9a-fA-F]{6})"', body[1]))


def test_print_colours_are_the_web_maps() -> None:
    uses = _map_js_colours("USE_COLOURS")
    assert set(uses) == set(ENUMS["use"])
    assert uses == USE_COLOURS
    assert _map_js_colours("USE_COLOURS", "field") == USE_COLOURS  # and the field app's
    facilities = _map_js_colours("FACILITY_COLOURS")
    assert set(facilities) == set(ENUMS["type"])
    assert facilities == FACILITY_COLOURS
    assert {kind: colour for kind, (_m, colour) in FACILITY_STYLE.items()} == facilities


def test_a_structure_is_drawn_in_its_use_colour() -> None:
    structures = [
        Structure(k, f"C-{k}", use, 0, "collected", "C", x + 5, 5, shapely.box(x, 0, x + 10, 10))
        for k, (use, x) in enumerate((("residential", 0), ("business", 20), (None, 40)))
    ]
    data = AtlasData(1, "Colours", shapely.box(-5, -5, 55, 15), structures, [])
    image = render_window(MapLayers(data), (-5, -5, 55, 15), (60, 20))  # 1 mm a metre
    for structure, use in zip(structures, ("residential", "business", "other"), strict=True):
        px = round((structure.x + 5) / 60 * image.width)
        py = round(image.height - (structure.y + 5) / 20 * image.height)
        pixel = image.getpixel((px, py))
        assert isinstance(pixel, tuple)
        assert "#" + bytes(pixel).hex() == USE_COLOURS[use], use


def _insert_squares(connection: Connection, rows: list[dict[str, Any]]) -> None:
    """Residential structures numbered ``n``, squares from (x0, y0) to (x1, y1) in EPSG:32737."""
    connection.execute(
        text(
            "INSERT INTO structures (structure_number, use, geom) VALUES (:n, 'residential', "
            "ST_Transform(ST_MakeEnvelope(:x0, :y0, :x1, :y1, 32737), 4326))"
        ),
        rows,
    )


@needs_poppler
def test_crowded_block_numbers_do_not_overlap(
    client: TestClient, connection: Connection, token_for: Headers, tmp_path: Path
) -> None:
    sid = insert_settlement(connection, "Dense", 0, 0, 200, 130)
    rows = [
        {
            "n": f"DN-01-{i * 25 + j + 1:04d}",
            "x0": E0 + 5 + i * 4,
            "y0": N0 + 5 + j * 4,
            "x1": E0 + 8.5 + i * 4,
            "y1": N0 + 8.5 + j * 4,
        }
        for i in range(40)
        for j in range(25)
    ]
    _insert_squares(connection, rows)
    pdf = _atlas(client, sid, token_for("planner"), tmp_path / "dense.pdf")
    pages = _pages(pdf)
    map_pages = [k for k, page in enumerate(pages, start=1) if "Block DN-01: map" in page]
    assert len(map_pages) > 1  # too dense for one legible page: tiled
    seen: set[str] = set()
    for page in map_pages:
        assert "scale 1:" in pages[page - 1]
        labels = [w for w in _words(pdf, page) if re.fullmatch(r"\d{4}", w[0])]
        seen.update(w[0] for w in labels)
        assert _overlapping(labels) == [], page
    assert seen == {row["n"][-4:] for row in rows}


@needs_poppler
def test_cover_block_names_do_not_print_over_each_other(
    client: TestClient, connection: Connection, token_for: Headers, tmp_path: Path
) -> None:
    # two blocks mixed on one patch of ground: their centres all but coincide
    sid = insert_settlement(connection, "Mixed", 0, 0, 120, 120)
    corners = [(E0 + 40 + (k % 4) * 8, N0 + 40 + (k // 4) * 8) for k in range(12)]
    rows = [
        {"n": f"MX-0{1 + k % 2}-{k:04d}", "x0": x, "y0": y, "x1": x + 4, "y1": y + 4}
        for k, (x, y) in enumerate(corners)
    ]
    _insert_squares(connection, rows)
    pdf = _atlas(client, sid, token_for("planner"), tmp_path / "mixed.pdf")
    names = [w for w in _words(pdf, 1) if re.fullmatch(r"MX-0[12]", w[0])]
    assert sorted(w[0] for w in names) == ["MX-01", "MX-02"]
    assert _overlapping(names) == []


@pytest.mark.parametrize(
    ("setting", "value", "status", "named"),
    [
        ("atlas_max_structures", 10, 413, "MAKAZI_ATLAS_MAX_STRUCTURES"),
        ("atlas_timeout_s", 0.001, 503, ""),
    ],
)
def test_atlas_limits(
    settings: Settings,
    db: BoundDatabase,
    token_for: Headers,
    kisima: Kisima,
    setting: str,
    value: float,
    status: int,
    named: str,
) -> None:
    limited = settings.model_copy(update={setting: value})
    with TestClient(create_app(limited, database=db), raise_server_exceptions=False) as client:
        answer = client.get(
            f"/settlements/{kisima.settlement}/atlas.pdf", headers=token_for("planner")
        )
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert named in answer.json()["detail"]


@needs_poppler
def test_point_structures_and_an_empty_settlement(
    client: TestClient, connection: Connection, token_for: Headers, tmp_path: Path
) -> None:
    planner = token_for("planner")
    empty = insert_settlement(connection, "Empty", 5000, 0, 50, 50)
    pages = _pages(_atlas(client, empty, planner, tmp_path / "empty.pdf"))
    assert len(pages) == 1 and "Empty: settlement atlas" in pages[0]
    points = insert_settlement(connection, "Points", 6000, 0, 60, 60)
    for k in range(7):
        connection.execute(
            text(
                "INSERT INTO structures (structure_number, use, geom) VALUES (:n, 'residential', "
                "ST_Transform(ST_SetSRID(ST_MakePoint(:x, :y), 32737), 4326))"
            ),
            {"n": f"P{k + 1}", "x": E0 + 6010 + 6 * k, "y": N0 + 30},
        )
    pages = _pages(_atlas(client, points, planner, tmp_path / "points.pdf"))
    # numbers without a prefix: one grid cell, its map and its sheet
    assert any("Block Grid A1: map" in page for page in pages)
    assert all(f"P{k}" in pages[-1] for k in range(1, 8))


@needs_poppler
def test_numbers_keep_off_facility_symbols(
    client: TestClient, connection: Connection, token_for: Headers, tmp_path: Path
) -> None:
    sid = insert_settlement(connection, "Tap", 8000, 0, 80, 40)
    for k in (1, 2):  # two structures side by side, a water point on the first one's middle
        insert_structure(connection, f"TP-01-00{k}", "residential", 8020 + 24 * (k - 1), 16)
    connection.execute(
        text(
            "INSERT INTO facilities (type, condition, geom) VALUES ('water_point', 'working', "
            "ST_Transform(ST_SetSRID(ST_MakePoint(:x, :y), 32737), 4326))"
        ),
        {"x": E0 + 8024, "y": N0 + 20},
    )
    pdf = _atlas(client, sid, token_for("planner"), tmp_path / "tap.pdf")
    scale = re.search(r"scale 1:(\d+)", _pages(pdf)[1])
    assert scale
    words = {w[0]: w[1:] for w in _words(pdf, 2) if w[0] in {"001", "002"}}
    # 24 m apart on the ground: where the first number would sit, the water point is drawn
    apart = 24_000 / int(scale[1]) / 25.4 * 72
    free = words["002"]
    sx, sy = (free[0] + free[2]) / 2 - apart, (free[1] + free[3]) / 2
    half = 2.6 / 2 / 25.4 * 72 - 0.5  # half the symbol's box, pt, less a little slack
    x0, y0, x1, y1 = words["001"]
    assert x1 <= sx - half or x0 >= sx + half or y1 <= sy - half or y0 >= sy + half, (
        words,
        (sx, sy),
    )
