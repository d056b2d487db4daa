"""``/docs`` (Swagger UI) loads nothing from another host.

FastAPI's own page takes swagger-ui-dist from a CDN and breaks offline; Makazi
serves a vendored copy (``app/static/vendor/swagger-ui``, ``make vendor``).  The
HTTP tests check the page and every file it names; the browser test renders the
page in headless Chromium with every request to another host blocked.

Set ``MAKAZI_DOCS_SCREENSHOT=/tmp/docs.png`` to keep a picture of the rendered page.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from tests.support.live import LiveServer

ROOT = Path(__file__).resolve().parents[2]
SWAGGER_UI = ROOT / "app" / "static" / "vendor" / "swagger-ui"

# what each kind of file must be served as, and at least how big it is
EXPECTED = {
    ".js": ("text/javascript", 500_000),
    ".css": ("text/css", 50_000),
    ".png": ("image/png", 200),
}
_REFERENCE = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", re.I)


def references(page: str) -> list[str]:
    """Every ``src=`` and ``href=`` value in an HTML page."""
    return _REFERENCE.findall(page)


def test_vendored_swagger_ui_is_the_makefiles_version() -> None:
    pinned = re.search(r"^SWAGGER_UI_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert pinned, "SWAGGER_UI_VERSION is not set in the Makefile"
    assert pinned[1].startswith("5.")
    assert (SWAGGER_UI / "VERSION").read_text().strip() == pinned[1]
    assert "Apache License" in (SWAGGER_UI / "LICENSE").read_text()
    assert "SmartBear" in (SWAGGER_UI / "NOTICE").read_text()
    bundle = (SWAGGER_UI / "swagger-ui-bundle.js").read_text()
    assert bundle.startswith("/*! For license information please see swagger-ui-bundle.js.LICENSE")
    for name in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert "sourceMappingURL" not in (SWAGGER_UI / name).read_text(), name


def test_docs_page_loads_only_files_served_here(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200, page.text
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>Makazi" in page.text
    assert "http://" not in page.text and "https://" not in page.text
    refs = references(page.text)
    assert len(refs) == 3, refs  # stylesheet, favicon, script
    for ref in refs:
        parts = urlsplit(ref)
        assert not parts.scheme and not parts.netloc and ref.startswith("/"), ref
    # the OpenAPI document Swagger UI reads is ours too, and the validator badge is off
    assert re.search(r"url: '/api'", page.text)
    assert '"validatorUrl": null' in page.text
    assert client.get("/api").json()["info"]["title"] == "Makazi"

    for ref in refs:
        media_type, smallest = EXPECTED[Path(ref).suffix]
        asset = client.get(ref)
        assert asset.status_code == 200, (ref, asset.text[:300])
        assert asset.headers["content-type"].split(";")[0] == media_type, ref
        assert len(asset.content) >= smallest, (ref, len(asset.content))
        assert asset.content == (SWAGGER_UI / Path(ref).name).read_bytes()
        etag = asset.headers["etag"]
        again = client.get(ref, headers={"If-None-Match": etag})
        assert again.status_code == 304, ref
        assert again.content == b""
        assert again.headers["etag"] == etag


def test_licence_texts_are_served(client: TestClient) -> None:
    base = "/static/vendor/swagger-ui"
    for name, words in [
        ("LICENSE", "Apache License"),
        ("NOTICE", "SmartBear"),
        ("swagger-ui-bundle.js.LICENSE.txt", "MIT"),
    ]:
        response = client.get(f"{base}/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert words in response.text
    # still a fixed list: nothing else of the package, nothing outside the folder
    for bad in (f"{base}/swagger-ui.js", f"{base}/VERSION", f"{base}/..%2Fmaplibre-gl.js"):
        response = client.get(bad)
        assert response.status_code == 404, bad
        assert response.headers["content-type"] == "application/problem+json"


def test_docs_behind_a_proxy_prefix(client: TestClient) -> None:
    proxied = TestClient(client.app, root_path="/makazi")
    page = proxied.get("/makazi/docs")
    assert page.status_code == 200, page.text
    refs = references(page.text)
    assert refs and all(ref.startswith("/makazi/static/vendor/swagger-ui/") for ref in refs)
    assert "url: '/makazi/api'" in page.text
    for ref in refs:
        assert proxied.get(ref).status_code == 200, ref


def test_landing_page_links_the_docs(client: TestClient) -> None:
    links = client.get("/", headers={"Accept": "application/json"}).json()["links"]
    (doc,) = [link for link in links if link["rel"] == "service-doc"]
    assert urlsplit(doc["href"]).path == "/docs"
    assert doc["type"] == "text/html"
    assert client.get("/docs/oauth2-redirect").status_code == 404  # not needed, not served


def _chromium() -> str | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None and Path("/usr/bin/chromium").exists():
        chromium = "/usr/bin/chromium"
    return chromium


@pytest.mark.browser
def test_docs_render_in_chromium_with_other_hosts_blocked(live_server: LiveServer) -> None:
    chromium = _chromium()
    if chromium is None:
        pytest.skip(
            "Chromium is not installed (Debian package `chromium`; scripts/system-deps.sh "
            "test installs it): /docs was only checked over HTTP"
        )
    from playwright.sync_api import sync_playwright

    from tests.web.test_map_browser import CHROMIUM_ARGS, VIEWPORT

    base = live_server.base_url
    requests: list[str] = []
    blocked: list[str] = []
    errors: list[str] = []

    def only_this_server(route: Any) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport=VIEWPORT).new_page()
            page.route("**/*", only_this_server)
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.goto(f"{base}/docs", wait_until="load")
            page.locator(".opblock").first.wait_for(timeout=30_000)
            assert "Makazi" in page.locator(".information-container .title").inner_text()
            assert page.title().startswith("Makazi")
            assert page.locator(".opblock").count() >= 20
            assert page.locator(".opblock-summary-path[data-path='/healthz']").count() == 1
            shot = os.environ.get("MAKAZI_DOCS_SCREENSHOT")
            if shot:
                page.screenshot(path=shot)

            # an operation runs from the page against this server
            page.locator(".opblock-summary-path[data-path='/healthz']").click()
            healthz = page.locator(".opblock", has=page.locator("[data-path='/healthz']"))
            healthz.locator("button.try-out__btn").click()
            with page.expect_response(lambda r: urlsplit(r.url).path == "/healthz") as info:
                healthz.locator("button.execute").click()
            assert info.value.status == 200
            status = healthz.locator(".live-responses-table tbody .response-col_status").first
            status.wait_for()
            assert status.inner_text().strip() == "200"
        finally:
            browser.close()

    assert blocked == [], blocked
    web = [u for u in requests if urlsplit(u).scheme in {"http", "https"}]
    assert {urlsplit(u).hostname for u in web} == {"127.0.0.1"}, requests
    paths = {urlsplit(u).path for u in web}
    assert {
        "/docs",
        "/api",
        "/static/vendor/swagger-ui/swagger-ui-bundle.js",
        "/static/vendor/swagger-ui/swagger-ui.css",
    } <= paths, sorted(paths)
    assert errors == []
