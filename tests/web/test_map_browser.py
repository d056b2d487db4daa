"""The web map in a real headless Chromium against a live server.

A separate database is created, migrated and filled with 600 demo structures
(committed: the browser talks to a real uvicorn process, not to the test
transaction) and dropped at the end.  Chromium is Debian's package, driven by
Playwright through ``executable_path``; no browser is ever downloaded.

Set ``MAKAZI_MAP_SCREENSHOT=docs/map.png`` to also write the README's picture.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from sqlalchemy import create_engine, text

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, small_targets, wait_until
from tests.support.live import LiveServer

pytestmark = pytest.mark.browser

VIEWPORT = {"width": 1200, "height": 800}

if CHROMIUM is None:
    pytest.skip(
        "Chromium is not installed (Debian package `chromium`; scripts/system-deps.sh test "
        "installs it)",
        allow_module_level=True,
    )

from playwright.sync_api import Page, sync_playwright  # noqa: E402


@dataclass
class Live:
    """The live server and its database."""

    base: str
    url: str
    token: str


@pytest.fixture(scope="module")
def live(live_server: LiveServer) -> Live:
    """The session's live server (demo data, a token per role)."""
    return Live(
        base=live_server.base_url, url=live_server.database_url, token=live_server.tokens["mapper"]
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Session:
    page: Page
    requests: list[str]
    errors: list[str]


@pytest.fixture
def session(browser: Any, live: Live) -> Iterator[Session]:
    """A fresh browser context on /map, ready (style, tiles and settlements loaded)."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.goto(f"{live.base}/map")
    wait_until(page, "window.makaziReady === true", 30_000)
    wait_idle(page)
    yield Session(page=page, requests=requests, errors=errors)
    context.close()


def wait_idle(page: Page, view: str = "null") -> None:
    """Move the map (``view`` is jumpTo options, or null) and wait until it is drawn."""
    page.evaluate(
        """(view) => new Promise((resolve) => {
            const map = window.makaziMap;
            map.once('idle', resolve);
            if (view) { map.jumpTo(view); } else { map.triggerRepaint(); }
        })""",
        json.loads(view),
    )


def sql(live: Live, query: str, **params: Any) -> list[Any]:
    engine = create_engine(live.url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(query), params).all())
    finally:
        engine.dispose()


def distinct_colours(page: Page) -> int:
    """Distinct colours (5 bits per channel) of a screenshot of the map area."""
    png = base64.b64encode(page.screenshot()).decode()
    return int(
        page.evaluate(
            """async (png) => {
                const img = new Image();
                img.src = 'data:image/png;base64,' + png;
                await img.decode();
                const canvas = document.createElement('canvas');
                canvas.width = img.width; canvas.height = img.height;
                const ctx = canvas.getContext('2d');
                ctx.drawImage(img, 0, 0);
                // the right part of the page: the map, not the side panel
                const x0 = Math.floor(img.width * 0.4);
                const data = ctx.getImageData(x0, 0, img.width - x0, img.height).data;
                const seen = new Set();
                for (let i = 0; i < data.length; i += 4) {
                    seen.add((data[i] >> 3) << 10 | (data[i + 1] >> 3) << 5 | (data[i + 2] >> 3));
                }
                return seen.size;
            }""",
            png,
        )
    )


def centre_of_densest_structures(live: Live) -> tuple[float, float]:
    (row,) = sql(
        live,
        "SELECT ST_X(c), ST_Y(c) FROM (SELECT ST_Centroid(ST_Collect(ST_Centroid(geom))) c "
        "FROM structures WHERE settlement_id = (SELECT settlement_id FROM structures "
        "GROUP BY 1 ORDER BY count(*) DESC LIMIT 1)) s",
    )
    return float(row[0]), float(row[1])


def test_map_loads_from_this_server_only_without_errors(session: Session, live: Live) -> None:
    page = session.page
    lon, lat = centre_of_densest_structures(live)
    wait_idle(page, json.dumps({"center": [lon, lat], "zoom": 16}))
    web = [url for url in session.requests if urlparse(url).scheme in {"http", "https"}]
    hosts = {urlparse(url).hostname for url in web}
    assert hosts == {"127.0.0.1"}, session.requests
    assert not [u for u in session.requests if urlparse(u).scheme not in {"http", "blob", "data"}]
    paths = {urlparse(url).path for url in session.requests}
    assert "/static/vendor/maplibre-gl.js" in paths
    assert "/tiles/tilejson.json" in paths
    assert any(p.startswith("/tiles/16/") and p.endswith(".mvt") for p in paths)
    assert session.errors == []
    # the legend and the layer toggles are there
    assert page.locator("#legend .legend-item").count() >= 20
    assert page.locator("#layer-toggles input[type=checkbox]").count() == 4


def test_layers_render_and_toggle(session: Session, live: Live) -> None:
    page = session.page
    lon, lat = centre_of_densest_structures(live)
    wait_idle(page, json.dumps({"center": [lon, lat], "zoom": 16.5}))
    rendered = page.evaluate(
        "() => window.makaziMap.queryRenderedFeatures({layers: ['structures-fill']}).length"
    )
    assert rendered > 50
    colourful = distinct_colours(page)
    assert colourful > 20  # background, boundary, several uses, facilities
    shot = os.environ.get("MAKAZI_MAP_SCREENSHOT")
    if shot:
        page.screenshot(path=shot)
    # switching structures off leaves fewer colours and nothing to query
    page.locator("#layer-toggles input[data-group=structures]").uncheck()
    wait_idle(page)
    assert (
        page.evaluate(
            "() => window.makaziMap.queryRenderedFeatures({layers: ['structures-fill']}).length"
        )
        == 0
    )
    assert distinct_colours(page) < colourful


def test_legend_draws_each_facility_type_as_the_map_does(session: Session, live: Live) -> None:
    shapes = session.page.evaluate(
        """() => {
            const group = Array.from(document.querySelectorAll('#legend .legend-group'))
                .find((g) => g.querySelector('b').textContent === 'Facility type');
            return Object.fromEntries(Array.from(group.querySelectorAll('.legend-item'))
                .map((item) => [item.textContent, item.querySelector('.swatch').className]));
        }"""
    )
    drawn = sql(
        live,
        "SELECT DISTINCT type::text, ST_Dimension(geom) AS dim FROM facilities "
        "WHERE deleted_at IS NULL",
    )
    assert {row.dim for row in drawn} >= {0, 1}  # the demo maps points and lines
    for row in drawn:
        swatch = shapes[row.type.replace("_", " ")]
        assert swatch == {0: "swatch dot", 1: "swatch line", 2: "swatch "}[row.dim], row


def quiet_structure(live: Live) -> Any:
    """A structure well away from facilities and traces (drawn above structures)."""
    (row,) = sql(
        live,
        "SELECT s.id, s.structure_number, s.use, s.settlement_id, ST_X(p) AS lon, "
        "ST_Y(p) AS lat FROM (SELECT *, ST_PointOnSurface(geom) p FROM structures) s "
        "WHERE NOT EXISTS (SELECT 1 FROM facilities f "
        "WHERE ST_DWithin(f.geom::geography, s.p::geography, 20)) "
        "AND NOT EXISTS (SELECT 1 FROM traces t WHERE t.geom IS NOT NULL "
        "AND ST_DWithin(t.geom::geography, s.p::geography, 20)) "
        "AND strpos(s.wall_material, '_') > 0 "  # a code such as iron_sheet
        "ORDER BY s.id LIMIT 1",
    )
    return row


def open_popup(page: Page, row: Any) -> Any:
    """Click the structure ``row`` (centred on the map); the popup's content."""
    wait_idle(page, json.dumps({"center": [row.lon, row.lat], "zoom": 19.5}))
    x, y = page.evaluate(
        "([lon, lat]) => { const p = window.makaziMap.project([lon, lat]); return [p.x, p.y]; }",
        [row.lon, row.lat],
    )
    page.mouse.click(x, y)
    popup = page.locator(".maplibregl-popup-content")
    popup.wait_for(timeout=10_000)
    return popup


def test_click_on_a_structure_opens_its_popup(session: Session, live: Live) -> None:
    page = session.page
    row = quiet_structure(live)
    popup = open_popup(page, row)
    content = popup.inner_text()
    assert f"Structure {row.structure_number}" in content
    assert row.use in content
    # a person reads words and names, not codes: "iron sheet", the settlement's name
    values = popup.locator("td:nth-child(2)").all_inner_texts()
    assert values and not [v for v in values if "_" in v]
    (name,) = sql(live, "SELECT name FROM settlements WHERE id = :id", id=row.settlement_id)[0]
    assert f"settlement\t{name}" in content
    link = popup.locator("a.history")
    assert link.get_attribute("href") == f"/collections/structures/items/{row.id}/history"
    page.keyboard.press("Escape")  # closes it, as a dialog would
    popup.wait_for(state="detached", timeout=5_000)
    popup = open_popup(page, row)  # picking another settlement leaves it behind: closed too
    page.select_option("#settlement-picker", str(row.settlement_id))
    popup.wait_for(state="detached", timeout=5_000)
    assert session.errors == []


def test_settlement_picker_zooms_and_shows_the_summary(session: Session, live: Live) -> None:
    page = session.page
    (settlement,) = sql(
        live,
        "SELECT id, name, ST_XMin(geom) AS w, ST_YMin(geom) AS s, ST_XMax(geom) AS e, "
        "ST_YMax(geom) AS n FROM settlements ORDER BY id LIMIT 1",
    )
    options = page.locator("#settlement-picker option").all_inner_texts()
    assert len(options) == 1 + len(sql(live, "SELECT id FROM settlements"))
    with page.expect_response(lambda r: "/summary" in r.url) as info:
        page.select_option("#settlement-picker", str(settlement.id))
    response = info.value
    wait_idle(page)
    west, south, east, north = page.evaluate("() => window.makaziMap.getBounds().toArray().flat()")
    assert west <= settlement.w and east >= settlement.e
    assert south <= settlement.s and north >= settlement.n
    assert east - west < 0.2  # zoomed to the settlement, not the whole city
    summary = page.locator("#summary")
    if response.status == 200:
        body = response.json()
        page.wait_for_selector("#summary table")
        text_ = summary.inner_text()
        assert "structures" in text_
        if body.get("structures") is not None:
            assert f"{body['structures']:,}" in text_ or str(body["structures"]) in text_
        # signed out, the demo's few clinics and schools are hidden small counts: "<5", not "—"
        by_type = [k for k in body["suppressed"] if k.startswith("facilities_by_type.")]
        assert by_type
        for key in by_type:
            assert f"{key.split('.')[1].replace('_', ' ')}: <5" in text_
        assert "—" not in text_
    else:
        page.wait_for_selector("#summary :text('Summary not available')")


def test_download_of_the_visible_settlement(session: Session, live: Live) -> None:
    page = session.page
    (settlement,) = sql(
        live,
        "SELECT settlement_id AS id, count(*) AS n FROM structures GROUP BY 1 "
        "ORDER BY 2 DESC LIMIT 1",
    )
    page.select_option("#settlement-picker", str(settlement.id))
    with page.expect_download(timeout=30_000) as info:
        page.click("#download button[data-collection=structures]")
    path = info.value.path()
    assert path is not None
    collection = json.loads(Path(path).read_text())
    assert collection["type"] == "FeatureCollection"
    assert len(collection["features"]) == settlement.n
    numbers = {f["properties"]["structure_number"] for f in collection["features"]}
    expected = {
        r.structure_number
        for r in sql(
            live,
            "SELECT structure_number FROM structures WHERE settlement_id = :s",
            s=settlement.id,
        )
    }
    assert numbers == expected


def _walk_gpx(live: Live) -> tuple[bytes, int]:
    """A 40-point walk along the middle of the first settlement, one point every 5 s."""
    (row,) = sql(
        live,
        "SELECT ST_X(c) AS lon, ST_Y(c) AS lat FROM "
        "(SELECT ST_PointOnSurface(geom) c FROM settlements ORDER BY id LIMIT 1) s",
    )
    points = []
    for i in range(40):
        lon = row.lon - 0.001 + i * 0.00005
        lat = row.lat + (0.00002 if i % 2 else -0.00002)
        points.append(
            f'<trkpt lat="{lat:.7f}" lon="{lon:.7f}"><ele>1700</ele>'
            f"<time>2024-05-04T08:{i // 12:02d}:{(i % 12) * 5:02d}Z</time></trkpt>"
        )
    gpx = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<gpx version="1.1" creator="makazi-test" xmlns="http://www.topografix.com/GPX/1/1">'
        "<trk><name>lane walk</name><trkseg>" + "".join(points) + "</trkseg></trk></gpx>"
    )
    return gpx.encode(), len(points)


def test_gpx_drop_uploads_with_the_token_and_draws_the_trace(session: Session, live: Live) -> None:
    page = session.page
    gpx, _ = _walk_gpx(live)
    # without a token the drop asks for one and sends nothing
    drop = """async (gpx) => {
        const dt = new DataTransfer();
        dt.items.add(new File([gpx], 'lane-walk.gpx', {type: 'application/gpx+xml'}));
        const target = document.getElementById('map');
        for (const type of ['dragenter', 'dragover', 'drop']) {
            target.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true,
                                                      cancelable: true}));
        }
    }"""
    page.evaluate(drop, gpx.decode())
    page.wait_for_selector("#upload-result .error")
    assert not [u for u in session.requests if urlparse(u).path == "/traces"]
    # sign in once: the token is kept in localStorage
    page.fill("#token-input", live.token)
    page.click("#token-save")
    assert page.evaluate("() => localStorage.getItem('makazi.token')") == live.token
    page.select_option("#trace-visibility", "public")
    with page.expect_response(
        lambda r: urlparse(r.url).path == "/traces" and r.request.method == "POST"
    ) as info:
        page.evaluate(drop, gpx.decode())
    response = info.value
    assert response.status == 201, response.text()
    assert response.request.headers["authorization"] == f"Bearer {live.token}"
    assert response.request.headers["content-type"].startswith("application/gpx+xml")
    trace = response.json()
    page.wait_for_selector("#upload-result .ok")
    result = page.locator("#upload-result").inner_text()
    assert f"#{trace['id']}" in result
    assert str(trace["stats"]["points"]) in result
    for item in trace.get("dropped", []):
        if item.get("count"):
            assert item["reason"] in result
    # the cleaned trace is fetched and drawn
    wait_until(page, "() => window.makaziMap.querySourceFeatures('uploaded').length > 0", 10_000)
    paths = {urlparse(u).path for u in session.requests}
    assert f"/traces/{trace['id']}/geojson" in paths
    stored = sql(live, "SELECT visibility, owner FROM traces WHERE id = :i", i=trace["id"])
    assert stored[0].visibility == "public" and stored[0].owner == "live-mapper"
    assert session.errors == []


def test_phone_layout_and_opt_in_basemap(browser: Any, live: Live) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 800}, is_mobile=True, has_touch=True
    )
    page = context.new_page()
    outside: list[str] = []
    page.route(
        "https://tile.openstreetmap.org/**",
        lambda route: (outside.append(route.request.url), route.abort()),
    )
    try:
        page.goto(f"{live.base}/map")
        wait_until(page, "window.makaziReady === true", 30_000)
        wait_idle(page)
        # the panel starts folded away; the map fills the screen
        assert not page.locator("#panel").is_visible()
        box = page.locator("#map canvas").bounding_box()
        assert box is not None and box["width"] >= 380 and box["height"] >= 780
        page.click("#panel-toggle")
        assert page.locator("#panel").is_visible()
        panel = page.locator("#panel").bounding_box()
        assert panel is not None and panel["y"] > 300  # a bottom sheet
        # every control a thumb taps (a checkbox through its label) is at least 44 px across
        controls = (
            ".maplibregl-ctrl button, #panel-toggle, #panel a, #panel button, #panel select, "
            "#panel input:not([type=checkbox]), #panel label.toggle"
        )
        small = small_targets(page, controls)
        assert not small, "; ".join(small)
        assert outside == []
        page.locator("#basemap-toggle").check()
        wait_until(page, "() => window.makaziMap.getSource('osm') !== undefined")
        page.wait_for_timeout(500)
        assert outside and all(u.startswith("https://tile.openstreetmap.org/") for u in outside)
        assert page.evaluate("() => localStorage.getItem('makazi.basemap')") == "1"
    finally:
        context.close()


def test_a_popup_on_a_phone_is_not_hidden_under_the_buttons(browser: Any, live: Live) -> None:
    context = browser.new_context(
        viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True
    )
    page = context.new_page()
    try:
        page.goto(f"{live.base}/map")
        wait_until(page, "window.makaziReady === true", 30_000)
        row = quiet_structure(live)
        popup = open_popup(page, row)
        box = popup.bounding_box()
        assert box is not None
        page.locator(".maplibregl-popup-close-button").click()
        # tap it again where its popup reaches the top of the screen, under the buttons
        x, y = page.evaluate(
            """([lon, lat, top]) => {
                const map = window.makaziMap;
                const p = map.project([lon, lat]);
                map.panBy([0, p.y - top], {animate: false});
                const q = map.project([lon, lat]);
                return [q.x, q.y];
            }""",
            [row.lon, row.lat, box["height"] + 20],
        )
        wait_idle(page)
        page.mouse.click(x, y)
        popup.wait_for(timeout=10_000)
        box = popup.bounding_box()
        assert box is not None and box["y"] < 54  # level with the top buttons
        covered = page.evaluate(
            """([x, y, w, h]) => {
                const out = [];
                for (let i = 1; i < 10; i++) {
                    for (let j = 1; j < 10; j++) {
                        const e = document.elementFromPoint(x + w * i / 10, y + h * j / 10);
                        if (!e.closest('.maplibregl-popup')) { out.push(e.id || e.className); }
                    }
                }
                return out;
            }""",
            [box["x"], box["y"], box["width"], box["height"]],
        )
        assert covered == []
    finally:
        context.close()


def test_static_files_are_a_fixed_list(live: Live) -> None:
    import httpx

    assert httpx.get(f"{live.base}/static/map/map.js").status_code == 200
    assert httpx.get(f"{live.base}/static/vendor/maplibre-gl.js").status_code == 200
    for bad in ("/static/map/..%2F..%2Fmain.py", "/static/vendor/x.js", "/static/etc/passwd"):
        response = httpx.get(f"{live.base}{bad}")
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
    first = httpx.get(f"{live.base}/map")
    again = httpx.get(f"{live.base}/map", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    html = first.text
    assert "http://" not in html and "https://" not in html


def projected_box(page: Page, box: Any) -> dict[str, float]:
    """Where a lon/lat box lies on the screen (CSS pixels)."""
    corners = page.evaluate(
        "(b) => [window.makaziMap.project([b[0], b[1]]), window.makaziMap.project([b[2], b[3]])]",
        [box.w, box.s, box.e, box.n],
    )
    return {
        "left": min(c["x"] for c in corners),
        "right": max(c["x"] for c in corners),
        "top": min(c["y"] for c in corners),
        "bottom": max(c["y"] for c in corners),
    }


def visible_labels(page: Page) -> list[dict[str, float]]:
    return list(
        page.evaluate(
            """() => Array.from(document.querySelectorAll('.settlement-label'))
                .filter(e => e.style.visibility === 'visible' && !e.hidden)
                .map(e => e.getBoundingClientRect().toJSON())"""
        )
    )


def settlement_named(live: Live, pattern: str) -> Any:
    (row,) = sql(
        live,
        "SELECT id, ST_XMin(geom) AS w, ST_YMin(geom) AS s, ST_XMax(geom) AS e, "
        "ST_YMax(geom) AS n FROM settlements WHERE name LIKE :p",
        p=pattern,
    )
    return row


@pytest.mark.parametrize("width", [390, 1200])
def test_a_picked_settlement_is_fitted_into_the_part_no_panel_covers(
    browser: Any, live: Live, width: int
) -> None:
    # has_touch, not is_mobile: headless Chromium's mobile emulation leaves the canvas
    # unrepainted under an open sheet, which says nothing about real phones
    context = browser.new_context(viewport={"width": width, "height": 800}, has_touch=True)
    page = context.new_page()
    try:
        page.goto(f"{live.base}/map")
        wait_until(page, "window.makaziReady === true", 30_000)
        if width < 700:
            page.click("#panel-toggle")  # the bottom sheet
        settlement = settlement_named(live, "Mukuru kwa Njenga%")
        page.select_option("#settlement-picker", str(settlement.id))
        page.wait_for_selector("#summary table, #summary :text('Summary not available')")
        wait_until(page, "() => !window.makaziMap.isMoving()")
        page.wait_for_timeout(800)  # the fit starts on the next frame and lasts 600 ms
        wait_until(page, "() => !window.makaziMap.isMoving()")
        box = projected_box(page, settlement)
        panel = page.locator("#panel").bounding_box()
        assert panel is not None
        if width < 700:
            assert box["top"] >= 0 and box["bottom"] <= panel["y"], (box, panel)
            assert box["left"] >= 0 and box["right"] <= width
        else:
            assert panel["x"] + panel["width"] <= box["left"] and box["right"] <= width
            assert box["top"] >= 0 and box["bottom"] <= 800
        assert box["bottom"] - box["top"] > 150  # zoomed in, not a speck
    finally:
        context.close()


def test_settlement_names_never_overlap_or_run_off_the_screen(browser: Any, live: Live) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 800}, has_touch=True)
    page = context.new_page()
    try:
        page.goto(f"{live.base}/map")
        wait_until(page, "window.makaziReady === true", 30_000)
        wait_idle(page)
        for zoom in (10.5, 11.5, 12.5, 14):
            wait_idle(page, json.dumps({"zoom": zoom, "center": [36.84, -1.29]}))
            labels = visible_labels(page)
            for i, a in enumerate(labels):
                assert a["left"] >= 0 and a["right"] <= 390, (zoom, a)
                assert a["top"] >= 0 and a["bottom"] <= 800, (zoom, a)
                for b in labels[i + 1 :]:
                    apart = (
                        a["right"] <= b["left"]
                        or b["right"] <= a["left"]
                        or a["bottom"] <= b["top"]
                        or b["bottom"] <= a["top"]
                    )
                    assert apart, (zoom, a, b)
        # the two Mukuru settlements side by side: one name at least, never both on top
        mukuru = settlement_named(live, "Mukuru kwa Njenga%")
        wait_idle(page, json.dumps({"zoom": 13, "center": [mukuru.e, mukuru.n]}))
        assert visible_labels(page)
    finally:
        context.close()
