"""The field app in headless Chromium against a live server, at phone size.

Chromium is Debian's package driven by Playwright (no browser download); the
server is the session's live uvicorn with 400 demo structures.  Tests drive the
page by the accessible names API.md fixes (``Token``, ``Sign in``, ``Settlement``,
``Download for offline``, ``New structure``...), go offline with
``context.set_offline``, move the phone with ``context.set_geolocation``, and
check the server's side through the API.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, small_targets, wait_until
from tests.support.live import LiveServer

pytestmark = pytest.mark.browser

if CHROMIUM is None:
    pytest.skip(
        "Chromium is not installed (Debian package `chromium`; scripts/system-deps.sh test "
        "installs it)",
        allow_module_level=True,
    )

from playwright.sync_api import Page, Route, expect, sync_playwright  # noqa: E402

PHONE = {"width": 360, "height": 740}
SHOTS = os.environ.get("MAKAZI_FIELD_SCREENSHOTS")  # a folder: keep the screenshots there


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Phone:
    """A browser context at phone size on /field, with what the page logged."""

    context: Any
    page: Page
    errors: list[str]
    live: LiveServer

    def api(
        self,
        method: str,
        path: str,
        role: str = "admin",
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """A request to the live server as ``role`` (plus ``headers``)."""
        return httpx.request(
            method,
            self.live.base_url + path,
            headers={**self.live.headers(role), **(headers or {})},
            **kwargs,
        )

    def shot(self, name: str, selector: str | None = None) -> None:
        """Keep a screenshot (of the page, or of ``selector`` scrolled into view)."""
        if SHOTS:
            Path(SHOTS).mkdir(parents=True, exist_ok=True)
            path = str(Path(SHOTS) / f"{name}.png")
            if selector:
                self.page.locator(selector).scroll_into_view_if_needed()
            self.page.screenshot(path=path)


@pytest.fixture
def phone(browser: Any, live_server: LiveServer) -> Iterator[Phone]:
    """A fresh phone (no storage, no service worker) with the position at the largest settlement."""
    lon, lat = largest_settlement(live_server)[2]
    context = browser.new_context(
        viewport=PHONE,
        is_mobile=True,
        has_touch=True,
        permissions=["geolocation"],
        geolocation={"longitude": lon, "latitude": lat, "accuracy": 6},
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.goto(f"{live_server.base_url}/field")
    ready(page)
    yield Phone(context=context, page=page, errors=errors, live=live_server)
    context.close()


_LARGEST: dict[str, tuple[int, str, tuple[float, float]]] = {}


def largest_settlement(live: LiveServer) -> tuple[int, str, tuple[float, float]]:
    """The settlement with the most structures: id, name and a point inside it."""
    if "x" not in _LARGEST:
        structures = httpx.get(
            f"{live.base_url}/collections/structures/items",
            params={"limit": 10_000, "skipGeometry": "true"},
        ).json()["features"]
        counts: dict[int, int] = {}
        for f in structures:
            sid = f["properties"]["settlement_id"]
            counts[sid] = counts.get(sid, 0) + 1
        sid = max(counts, key=lambda k: counts[k])
        info = httpx.get(f"{live.base_url}/field/settlements/{sid}").json()
        west, south, east, north = info["bbox"]
        _LARGEST["x"] = (sid, info["name"], ((west + east) / 2, (south + north) / 2))
    return _LARGEST["x"]


def ready(page: Page) -> None:
    wait_until(page, "window.makaziField && window.makaziField.ready === true", 30_000)


def sign_in(page: Page, token: str) -> None:
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def download(phone: Phone) -> tuple[int, str]:
    sid, name, _ = largest_settlement(phone.live)
    page = phone.page
    page.get_by_label("Settlement").select_option(str(sid))
    expect(page.locator("#package-size")).to_contain_text("Download size")
    page.get_by_role("button", name="Download for offline").click()
    expect(page.get_by_text("Ready offline")).to_be_visible(timeout=30_000)
    return sid, name


def waiting(page: Page, n: int) -> None:
    expect(page.get_by_text(f"{n} waiting", exact=True)).to_be_visible(timeout=20_000)


def new_structure(page: Page, number: str, *, locate: bool = True) -> None:
    page.get_by_role("button", name="New structure").click()
    page.get_by_label("Structure number").fill(number)
    page.get_by_label("Use", exact=True).select_option("business")
    page.get_by_label("Wall material").fill("iron sheet")
    page.get_by_label("Roof material").fill("iron sheet")
    page.get_by_label("Storeys").fill("2")
    if locate:
        page.get_by_role("button", name="Use my location").click()
        expect(page.locator("#position")).to_contain_text("±6 m")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator("#structure-form")).to_be_hidden()


def structures_numbered(phone: Phone, number: str) -> list[dict[str, Any]]:
    response = phone.api(
        "GET", "/collections/structures/items", params={"structure_number": number, "limit": 50}
    )
    assert response.status_code == 200, response.text
    return list(response.json()["features"])


def tap_structure(phone: Phone, fid: int) -> None:
    """Tap the structure ``fid`` on the map (zoomed in on it)."""
    page = phone.page
    lon, lat = centre_of(phone.api("GET", f"/collections/structures/items/{fid}").json())
    page.evaluate(
        """([lon, lat]) => new Promise((resolve) => {
            const map = window.makaziMap;
            map.once('idle', resolve);
            map.jumpTo({center: [lon, lat], zoom: 20});
        })""",
        [lon, lat],
    )
    box = page.locator("#map").bounding_box()
    assert box is not None
    x, y = page.evaluate(
        "([lon, lat]) => { const p = window.makaziMap.project([lon, lat]); return [p.x, p.y]; }",
        [lon, lat],
    )
    page.mouse.click(box["x"] + x, box["y"] + y)
    expect(page.locator("#structure-form")).to_be_visible()


def a_structure_in(phone: Phone, sid: int, skip: int = 0) -> dict[str, Any]:
    features = phone.api(
        "GET",
        "/collections/structures/items",
        params={"settlement_id": sid, "limit": 5, "offset": skip},
    ).json()["features"]
    return dict(features[skip % len(features)])


# ---------------------------------------------------------------------------- tests


def test_page_at_phone_size_installs_and_logs_no_error(phone: Phone) -> None:
    page = phone.page
    manifest = phone.api("GET", "/field/manifest.webmanifest")
    assert manifest.headers["content-type"].startswith("application/manifest+json")
    assert manifest.json()["scope"] == "/field"
    assert page.evaluate("() => document.querySelector('link[rel=manifest]').href").endswith(
        "/field/manifest.webmanifest"
    )
    scope = wait_until(
        page,
        "navigator.serviceWorker.getRegistration('/field')"
        ".then(r => r && r.active ? r.scope : null)",
    )
    assert scope.endswith("/field")
    for name in ("Token", "Settlement"):
        expect(page.get_by_label(name, exact=True)).to_be_visible()
    for name in ("Sign in", "Download for offline", "New structure", "Start walk", "Sync"):
        expect(page.get_by_role("button", name=name, exact=True)).to_be_visible()
    waiting(page, 0)
    # nothing wider than the phone
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    sign_in(page, phone.live.tokens["mapper"])
    download(phone)
    page.get_by_role("button", name="New structure").click()
    for name in ("Structure number", "Use", "Wall material", "Roof material", "Storeys"):
        expect(page.get_by_label(name, exact=True)).to_be_visible()
    uses = (
        page.get_by_label("Use", exact=True)
        .locator("option")
        .evaluate_all("options => options.map(o => o.value).filter(Boolean)")
    )
    assert uses == [
        "residential",
        "business",
        "mixed",
        "religious",
        "school",
        "clinic",
        "toilet",
        "water_point",
        "other",
    ]
    phone.shot("field-form")
    # every control a thumb taps (a checkbox through its label) is at least 44 px across
    controls = "button, a, select, input:not([type=checkbox]):not([type=file]), label.toggle"
    small = small_targets(page, controls)
    assert not small, "; ".join(small)
    assert phone.errors == []


def test_offline_after_one_visit_and_saved_work_survives_reloads(phone: Phone) -> None:
    page = phone.page
    sign_in(page, phone.live.tokens["mapper"])
    sid, _ = download(phone)
    phone.shot("field-ready")
    phone.context.set_offline(True)
    page.reload()
    ready(page)
    expect(page.get_by_text("offline", exact=True)).to_be_visible()
    expect(page.get_by_text("Ready offline")).to_be_visible()
    assert page.get_by_label("Settlement").input_value() == str(sid)
    number = f"F-{uuid.uuid4().hex[:8]}"
    new_structure(page, number)
    waiting(page, 1)
    phone.shot("field-offline-waiting", "#outbox-list")
    page.reload()
    ready(page)
    waiting(page, 1)
    # a restart: the app closed and opened again, still with no network
    page.close()
    page = phone.context.new_page()
    phone.page = page
    page.goto(f"{phone.live.base_url}/field")
    ready(page)
    waiting(page, 1)
    assert structures_numbered(phone, number) == []
    phone.context.set_offline(False)  # the app syncs by itself when the network returns
    waiting(page, 0)
    expect(page.locator("#sync-status")).to_contain_text("Synced 1 item")
    created = structures_numbered(phone, number)
    assert len(created) == 1
    props = created[0]["properties"]
    assert props["use"] == "business" and props["storeys"] == 2
    assert props["settlement_id"] == sid
    assert props["position_accuracy_m"] == 6
    assert created[0]["geometry"]["type"] == "Point"


def test_a_sync_whose_answer_is_lost_is_retried_without_a_duplicate(phone: Phone) -> None:
    page = phone.page
    sign_in(page, phone.live.tokens["mapper"])
    download(phone)
    number = f"L-{uuid.uuid4().hex[:8]}"
    new_structure(page, number)
    waiting(page, 1)
    answered: list[int] = []

    def lose_the_answer(route: Route) -> None:
        response = route.fetch()  # the server does the work...
        answered.append(response.status)
        route.abort("connectionreset")  # ...and the phone never hears back

    page.route("**/collections/structures/items", lose_the_answer)
    page.get_by_role("button", name="Sync").click()
    # in words, not the browser's "Failed to fetch"
    expect(page.locator("#sync-status")).to_contain_text(
        "Sync stopped (the server could not be reached)"
    )
    waiting(page, 1)
    assert answered == [201]
    assert len(structures_numbered(phone, number)) == 1
    page.unroute("**/collections/structures/items")
    with page.expect_response("**/collections/structures/items") as info:
        page.get_by_role("button", name="Sync").click()
    assert info.value.status == 201
    assert info.value.headers.get("idempotent-replayed") == "true"
    waiting(page, 0)
    assert len(structures_numbered(phone, number)) == 1


def test_walk_positions_become_a_trace_with_their_accuracy(phone: Phone) -> None:
    page = phone.page
    sign_in(page, phone.live.tokens["mapper"])
    sid, _ = download(phone)
    lon, lat = largest_settlement(phone.live)[2]
    page.get_by_role("button", name="Start walk").click()
    path = [(lon + i * 0.0001, lat + (i % 3) * 0.00005, 4 + i) for i in range(8)]
    for x, y, accuracy in path:
        phone.context.set_geolocation({"longitude": x, "latitude": y, "accuracy": accuracy})
        time.sleep(0.3)
    wait_until(page, "document.getElementById('walk-status').textContent.includes('points')")
    recorded = int(page.locator("#walk-status").inner_text().split(": ")[1].split()[0])
    assert recorded >= 5
    page.get_by_role("button", name="Stop walk").click()
    waiting(page, 1)
    page.get_by_role("button", name="Sync").click()
    waiting(page, 0)
    traces = phone.api("GET", "/traces", role="mapper").json()
    mine = [t for t in traces["traces"] if t["name"].startswith("Walk ")]
    assert mine, traces
    trace = phone.api("GET", f"/traces/{mine[0]['id']}", role="mapper").json()
    assert trace["stats"]["points"] == recorded
    assert trace["settlement_id"] == sid


def conflicting_edit(
    phone: Phone, skip: int, label: str, mine: str, theirs: dict[str, Any]
) -> dict[str, Any]:
    """Edit a structure on the phone, have a planner change it through the API, then Sync.

    Returns the structure as it was before both edits.
    """
    page = phone.page
    sign_in(page, phone.live.tokens["mapper"])
    sid, _ = download(phone)
    target = a_structure_in(phone, sid, skip=skip)
    fid, version = target["id"], target["properties"]["version"]
    tap_structure(phone, fid)
    page.get_by_label(label).fill(mine)
    page.get_by_role("button", name="Save", exact=True).click()
    waiting(page, 1)
    # meanwhile someone edits the same structure through the API
    response = phone.api(
        "PATCH",
        f"/collections/structures/items/{fid}",
        role="planner",
        headers={"If-Match": f'"{version}"'},
        json={"type": "Feature", "properties": theirs},
    )
    assert response.status_code == 200, response.text
    page.get_by_role("button", name="Sync").click()
    return target


def test_a_conflicting_edit_is_kept_and_keep_mine_wins(phone: Phone) -> None:
    page = phone.page
    target = conflicting_edit(
        phone, 1, "Wall material", "mine: stone", {"wall_material": "theirs: brick"}
    )
    fid, version = target["id"], target["properties"]["version"]
    expect(page.get_by_role("heading", name="Conflicts")).to_be_visible()
    # the sync's own message says an edit met someone else's, not only "Synced N items"
    expect(page.locator("#sync-status")).to_contain_text("1 edit was changed by someone else")
    conflict = page.locator(".conflict")
    expect(conflict).to_contain_text("mine: stone")
    expect(conflict).to_contain_text("theirs: brick")
    phone.shot("field-conflict", "#conflicts-section")
    waiting(page, 0)
    records = phone.api("GET", "/conflicts", role="planner", params={"feature_id": fid}).json()
    (record,) = records["conflicts"]
    assert record["fields"]["wall_material"] == {
        "base": target["properties"]["wall_material"],
        "theirs": "theirs: brick",
        "mine": "mine: stone",
    }
    assert record["base_version"] == version and record["theirs_version"] == version + 1
    page.get_by_role("button", name="Keep mine").click()
    waiting(page, 2)
    page.get_by_role("button", name="Sync").click()
    waiting(page, 0)
    expect(page.get_by_role("heading", name="Conflicts")).to_be_hidden()
    now = phone.api("GET", f"/collections/structures/items/{fid}").json()
    assert now["properties"]["wall_material"] == "mine: stone"
    assert now["properties"]["version"] == version + 2
    (record,) = phone.api("GET", "/conflicts", role="planner", params={"feature_id": fid}).json()[
        "conflicts"
    ]
    assert record["resolution"] == "mine"


def test_keep_theirs_drops_the_local_edit(phone: Phone) -> None:
    page = phone.page
    target = conflicting_edit(phone, 2, "Storeys", "7", {"storeys": 3})
    fid, version = target["id"], target["properties"]["version"]
    page.get_by_role("button", name="Keep theirs").click()
    waiting(page, 1)  # the resolution, for reviewers
    page.get_by_role("button", name="Sync").click()
    waiting(page, 0)
    now = phone.api("GET", f"/collections/structures/items/{fid}").json()
    assert now["properties"]["storeys"] == 3 and now["properties"]["version"] == version + 1
    (record,) = phone.api("GET", "/conflicts", params={"feature_id": fid}).json()["conflicts"]
    assert record["resolution"] == "theirs"
    assert record["fields"]["storeys"]["mine"] == 7
    stored = page.evaluate(STORED_TEXT)
    assert '"storeys":7' not in stored.replace(" ", "")


# Everything the page keeps: IndexedDB (every store), localStorage and Cache Storage, as text.
STORED_TEXT = """async () => {
    const out = [];
    for (const info of await indexedDB.databases()) {
        const db = await new Promise((ok, no) => {
            const r = indexedDB.open(info.name); r.onsuccess = () => ok(r.result);
            r.onerror = () => no(r.error);
        });
        for (const name of db.objectStoreNames) {
            const rows = await new Promise((ok) => {
                const r = db.transaction(name).objectStore(name).getAll();
                r.onsuccess = () => ok(r.result);
            });
            out.push(JSON.stringify(rows));
        }
        db.close();
    }
    for (let i = 0; i < localStorage.length; i++) {
        out.push(localStorage.key(i), localStorage.getItem(localStorage.key(i)));
    }
    for (const name of await caches.keys()) {
        const cache = await caches.open(name);
        for (const request of await cache.keys()) {
            out.push(request.url, await (await cache.match(request)).text());
        }
    }
    return out.join('\\n');
}"""


def test_households_personal_fields_leave_the_phone_after_sync(phone: Phone) -> None:
    page = phone.page
    sign_in(page, phone.live.tokens["enumerator"])
    sid, _ = download(phone)
    target = a_structure_in(phone, sid, skip=3)
    tap_structure(phone, target["id"])
    head, tel = f"Wanjiru {uuid.uuid4().hex[:6]}", "+254700123987"
    page.get_by_role("button", name="Add a household").click()
    page.get_by_label("Head's name").fill(head)
    page.get_by_label("Phone").fill(tel)
    page.get_by_label("Members").fill("4")
    page.get_by_label("Tenure").select_option("tenant")
    page.get_by_role("button", name="Add household").click()
    waiting(page, 1)
    assert head in page.evaluate(STORED_TEXT)  # queued: on the phone until sent
    page.get_by_role("button", name="Sync").click()
    waiting(page, 0)
    stored = page.evaluate(STORED_TEXT)
    assert head not in stored and tel not in stored
    # listed back from the server on the structure's form: on screen, still not stored
    page.get_by_role("button", name="Cancel", exact=True).click()
    tap_structure(phone, target["id"])
    expect(page.locator("#households-list")).to_contain_text(head)
    stored = page.evaluate(STORED_TEXT)
    assert head not in stored and tel not in stored
    households = phone.api(
        "GET", f"/structures/{target['id']}/households", role="enumerator"
    ).json()["households"]
    assert [
        (h["head_name"], h["phone"], h["members"]) for h in households if h["head_name"] == head
    ] == [(head, tel, 4)]


def test_a_mapper_sees_no_household_form(phone: Phone) -> None:
    page = phone.page
    sign_in(page, phone.live.tokens["mapper"])
    sid, _ = download(phone)
    tap_structure(phone, a_structure_in(phone, sid)["id"])
    expect(page.get_by_role("button", name="Add a household")).to_be_hidden()


def test_a_refused_sign_in_loses_nothing(phone: Phone) -> None:
    page = phone.page
    sign_in(page, phone.live.tokens["mapper"])
    download(phone)
    number = f"R-{uuid.uuid4().hex[:8]}"
    new_structure(page, number)
    waiting(page, 1)
    page.evaluate("() => localStorage.setItem('makazi-field-token', 'mkz_not_a_real_token')")
    page.get_by_role("button", name="Sync").click()
    expect(page.locator("#sync-status")).to_contain_text("Sign-in refused")
    waiting(page, 1)
    expect(page.get_by_label("Token")).to_be_visible()
    sign_in(page, phone.live.tokens["mapper"])
    page.get_by_role("button", name="Sync").click()
    waiting(page, 0)
    assert len(structures_numbered(phone, number)) == 1


def test_a_sign_in_the_server_never_answers_is_kept_and_said(phone: Phone) -> None:
    page = phone.page
    page.route("**/field/me", lambda route: route.abort("connectionrefused"))
    page.get_by_label("Token").fill(phone.live.tokens["mapper"])
    page.get_by_role("button", name="Sign in").click()
    status = page.locator("#signin-status")
    expect(status).to_contain_text("Not checked: the server could not be reached")
    expect(status).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    assert "null" not in page.locator("#sheet").inner_text()
    page.unroute("**/field/me")
    page.reload()
    ready(page)
    expect(page.get_by_text("Signed in as mapper.")).to_be_visible()


def test_a_rough_fix_is_flagged_before_saving(phone: Phone) -> None:
    page = phone.page
    sign_in(page, phone.live.tokens["mapper"])
    download(phone)
    lon, lat = largest_settlement(phone.live)[2]
    phone.context.set_geolocation({"longitude": lon, "latitude": lat, "accuracy": 45})
    number = f"G-{uuid.uuid4().hex[:8]}"
    page.get_by_role("button", name="New structure").click()
    page.get_by_label("Structure number").fill(number)
    page.get_by_role("button", name="Use my location").click()
    expect(page.locator("#position")).to_contain_text("Rough fix: ±45 m")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator("#form-error")).to_contain_text("±45 m")
    waiting(page, 0)
    phone.shot("field-rough-fix")
    page.get_by_label("Keep this rough position").check()
    page.get_by_role("button", name="Save", exact=True).click()
    waiting(page, 1)
    page.get_by_role("button", name="Sync").click()
    waiting(page, 0)
    (created,) = structures_numbered(phone, number)
    assert created["properties"]["position_accuracy_m"] == 45
    # planners can filter on it
    rough = phone.api(
        "GET",
        "/collections/structures/items",
        params={"filter": "position_accuracy_m > 20", "limit": 1000},
    ).json()["features"]
    assert number in [f["properties"]["structure_number"] for f in rough]


def centre_of(feature: dict[str, Any]) -> tuple[float, float]:
    """The mean of a structure's outer ring without its closing vertex (or its point)."""
    ring = feature["geometry"]["coordinates"]
    while isinstance(ring[0][0], list):
        ring = ring[0]
    points = ring if isinstance(ring[0], list) else [ring]
    if len(points) > 1 and points[0] == points[-1]:
        points = points[:-1]
    return sum(p[0] for p in points) / len(points), sum(p[1] for p in points) / len(points)


def view(page: Page, lon: float, lat: float, zoom: float) -> None:
    """Move the map and wait until every tile of the view is drawn."""
    page.evaluate(
        """([lon, lat, zoom]) => new Promise((resolve) => {
            const map = window.makaziMap;
            map.once('idle', resolve);
            map.jumpTo({center: [lon, lat], zoom: zoom});
        })""",
        [lon, lat, zoom],
    )


# The structures MapLibre drew from the tile archive (not from the GeoJSON features)
TILE_STRUCTURES = """() => window.makaziMap.queryRenderedFeatures({
        layers: ['tiles-structures', 'tiles-structures-point']})
    .filter(f => f.source === 'tiles' && f.sourceLayer === 'structures')
    .map(f => f.properties.id)"""


def test_the_offline_map_draws_vector_tiles_from_the_package(phone: Phone) -> None:
    page = phone.page
    sign_in(page, phone.live.tokens["mapper"])
    # before any download the map says what to do instead of staying blank
    expect(page.locator("#map-empty")).to_be_visible()
    expect(page.locator("#map-empty")).to_contain_text("Download for offline")
    phone.shot("field-before-download")
    page.evaluate(
        """() => {
            window.statusSeen = [];
            const status = document.getElementById('offline-status');
            new MutationObserver(() => window.statusSeen.push(status.textContent))
                .observe(status, {childList: true, characterData: true, subtree: true});
        }"""
    )
    sid, _ = download(phone)
    expect(page.locator("#map-empty")).to_be_hidden()
    seen = page.evaluate("window.statusSeen")
    # the download said how far it had come, part by part, in bytes
    assert any(
        re.fullmatch(r"Downloading the map: [0-9.]+ [kM]?B( of [0-9.]+ [kM]?B)?…", s) for s in seen
    ), seen
    assert any(s.startswith("Downloading the structures: ") for s in seen), seen
    info = phone.api("GET", f"/field/settlements/{sid}").json()
    expect(page.locator("#package-size")).to_contain_text("map ")
    expect(page.locator("#offline-status")).to_contain_text("map ")
    kept = page.evaluate(
        """() => new Promise((ok) => {
            const r = indexedDB.open('makazi-field');
            r.onsuccess = () => {
                const get = r.result.transaction('tiles').objectStore('tiles').getAll();
                get.onsuccess = () => ok(get.result.map(t => [t.id, t.bytes, t.etag]));
            };
        })"""
    )
    assert kept == [[sid, info["tiles_bytes"], info["tiles_etag"]]]
    target = a_structure_in(phone, sid, skip=4)
    lon, lat = centre_of(target)
    phone.context.set_offline(True)
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url))
    page.reload()
    ready(page)
    expect(page.get_by_text("Ready offline")).to_be_visible()
    wait_until(page, "window.makaziMap.getSource('tiles') !== undefined")
    for zoom in (16, 18):
        view(page, lon, lat, zoom)
        assert page.evaluate("window.makaziMap.isSourceLoaded('tiles')")
        drawn = page.evaluate(TILE_STRUCTURES)
        assert len(drawn) > 0, zoom
        phone.shot(f"field-offline-map-z{zoom}")
    assert target["id"] in drawn  # at z18, the structure under the centre is in the view
    # nothing went to the network for tiles: they came from the archive on the phone
    assert not [url for url in asked if "/tiles" in url], asked
    assert phone.errors == []
    # freeing it removes the archive too
    page.get_by_role("button", name="Remove offline copy").click()
    expect(page.locator("#offline-status")).to_contain_text("Offline copy removed")
    assert page.evaluate("window.makaziMap.getSource('tiles') === undefined")
    count = page.evaluate(
        """() => new Promise((ok) => {
            const r = indexedDB.open('makazi-field');
            r.onsuccess = () => {
                const c = r.result.transaction('tiles').objectStore('tiles').count();
                c.onsuccess = () => ok(c.result);
            };
        })"""
    )
    assert count == 0


def shifted(geometry: dict[str, Any], dx: float, dy: float) -> dict[str, Any]:
    """A GeoJSON geometry moved by ``dx, dy`` degrees."""

    def shift(c: Any) -> Any:
        return [c[0] + dx, c[1] + dy] if isinstance(c[0], float | int) else [shift(x) for x in c]

    return {"type": geometry["type"], "coordinates": shift(geometry["coordinates"])}


def test_moving_a_structure_to_the_phone_position_is_sent_with_if_match(phone: Phone) -> None:
    page = phone.page
    sign_in(page, phone.live.tokens["mapper"])
    sid, _ = download(phone)
    target = a_structure_in(phone, sid, skip=5)
    fid, version = target["id"], target["properties"]["version"]
    lon, lat = centre_of(target)
    tap_structure(phone, fid)
    assert fid in page.evaluate(TILE_STRUCTURES)  # the archive draws it where it stood
    expect(page.get_by_role("button", name="Use my location")).to_be_hidden()
    page.get_by_role("button", name="Move", exact=True).click()
    there = (lon + 0.0001, lat + 0.00005)
    phone.context.set_geolocation({"longitude": there[0], "latitude": there[1], "accuracy": 5})
    page.get_by_role("button", name="Use my location").click()
    expect(page.locator("#position")).to_contain_text("±5 m")
    phone.shot("field-move", "#structure-form")
    page.get_by_role("button", name="Save", exact=True).click()
    waiting(page, 1)
    expect(page.locator("#outbox-list")).to_contain_text("Move of structure")
    view(page, lon, lat, 19)
    assert fid not in page.evaluate(TILE_STRUCTURES)  # no ghost left at the old place
    # the phone's copy moved at once (drawn from the package, which survives a reload)
    page.reload()
    ready(page)
    local = page.evaluate(
        f"""() => new Promise((ok) => {{
            const r = indexedDB.open('makazi-field');
            r.onsuccess = () => {{
                const g = r.result.transaction('packages').objectStore('packages').get({sid});
                g.onsuccess = () => ok(g.result.structures.features.find(f => f.id === {fid}));
            }};
        }})"""
    )
    assert centre_of(local) == pytest.approx(there, abs=1e-6)
    with page.expect_request(f"**/collections/structures/items/{fid}") as sent:
        page.get_by_role("button", name="Sync").click()
    assert sent.value.method == "PATCH"
    assert sent.value.headers["if-match"] == f'"{version}"'
    assert sent.value.headers["idempotency-key"]
    waiting(page, 0)
    now = phone.api("GET", f"/collections/structures/items/{fid}").json()
    assert now["geometry"]["type"] == target["geometry"]["type"]
    assert centre_of(now) == pytest.approx(there, abs=1e-6)
    assert now["properties"]["version"] == version + 1
    assert now["properties"]["position_accuracy_m"] == 5
    assert now["properties"]["structure_number"] == target["properties"]["structure_number"]
    assert phone.errors == []


def test_a_move_by_tap_that_conflicts_keeps_both_places(phone: Phone) -> None:
    page = phone.page
    sign_in(page, phone.live.tokens["mapper"])
    sid, _ = download(phone)
    target = a_structure_in(phone, sid, skip=6)
    fid, version = target["id"], target["properties"]["version"]
    tap_structure(phone, fid)
    page.get_by_role("button", name="Move", exact=True).click()
    box = page.locator("#map").bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + box["width"] / 2 + 40, box["y"] + box["height"] / 2 + 30)
    expect(page.locator("#position")).to_contain_text("Placed by a tap")
    page.get_by_role("button", name="Save", exact=True).click()
    waiting(page, 1)
    mine_at = page.evaluate(
        "() => { const c = window.makaziMap.unproject([window.makaziMap.getCanvas().clientWidth"
        " / 2 + 40, window.makaziMap.getCanvas().clientHeight / 2 + 30]); return [c.lng, c.lat]; }"
    )
    theirs = shifted(target["geometry"], -0.0002, 0.0)
    response = phone.api(
        "PATCH",
        f"/collections/structures/items/{fid}",
        role="planner",
        headers={"If-Match": f'"{version}"'},
        json={"type": "Feature", "geometry": theirs, "properties": {}},
    )
    assert response.status_code == 200, response.text
    page.get_by_role("button", name="Sync").click()
    expect(page.get_by_role("heading", name="Conflicts")).to_be_visible()
    expect(page.locator(".conflict")).to_contain_text("Place")
    expect(page.locator(".conflict")).to_contain_text("moved")
    phone.shot("field-move-conflict", "#conflicts-section")
    waiting(page, 0)
    (record,) = phone.api("GET", "/conflicts", role="planner", params={"feature_id": fid}).json()[
        "conflicts"
    ]
    place = record["fields"]["geometry"]
    assert centre_of({"geometry": place["base"]}) == pytest.approx(centre_of(target), abs=1e-6)
    assert centre_of({"geometry": place["theirs"]}) == pytest.approx(
        centre_of({"geometry": theirs}), abs=1e-6
    )
    assert centre_of({"geometry": place["mine"]}) == pytest.approx(mine_at, abs=1e-5)
    page.get_by_role("button", name="Keep mine").click()
    waiting(page, 2)
    page.get_by_role("button", name="Sync").click()
    waiting(page, 0)
    now = phone.api("GET", f"/collections/structures/items/{fid}").json()
    assert centre_of(now) == pytest.approx(mine_at, abs=1e-5)
    assert now["properties"]["version"] == version + 2
    assert now["properties"]["position_accuracy_m"] is None  # a tap has no GPS accuracy


def test_households_are_listed_for_enumerators_and_never_kept(phone: Phone) -> None:
    page = phone.page
    sid, _, _ = largest_settlement(phone.live)
    target = a_structure_in(phone, sid, skip=7)
    head, tel = f"Akinyi {uuid.uuid4().hex[:6]}", "+254711555222"
    created = phone.api(
        "POST",
        f"/structures/{target['id']}/households",
        role="enumerator",
        json={"head_name": head, "phone": tel, "members": 5, "tenure": "tenant"},
    )
    assert created.status_code == 201, created.text
    sign_in(page, phone.live.tokens["enumerator"])
    download(phone)
    tap_structure(phone, target["id"])
    households = page.locator("#households-list")
    expect(households).to_contain_text(head)
    expect(households).to_contain_text("5 members")
    expect(page.get_by_role("heading", name="Households")).to_be_visible()
    phone.shot("field-households", "#households-list-part")
    stored = page.evaluate(STORED_TEXT)
    assert head not in stored and tel not in stored
    page.get_by_role("button", name="Cancel", exact=True).click()
    assert head not in page.content()  # gone from the screen with the form
    # a mapper sees only how many there are
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, phone.live.tokens["mapper"])
    download(phone)  # the fresh package carries the new count
    tap_structure(phone, target["id"])
    expect(page.locator("#households-status")).to_contain_text("household")
    count = phone.api("GET", f"/collections/structures/items/{target['id']}").json()
    assert (
        f"{count['properties']['households']} household"
        in page.locator("#households-status").inner_text()
    )
    expect(households).to_be_empty()
    assert head not in page.content()
    stored = page.evaluate(STORED_TEXT)
    assert head not in stored and tel not in stored
    assert phone.errors == []
