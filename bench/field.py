"""The field app on the demo's data: download size, time to "Ready offline", sync of 100 structures.

A database like ``makazi serve --demo`` (``MAKAZI_DEMO_STRUCTURES``, default 20,000
structures, seed 7) is made in the bench cluster, served by uvicorn, and driven in
headless Chromium at phone size (360x740) exactly as a person would:

* **tile archive**: the settlement's offline map (PMTiles, zooms 14-18) is built by
  the first `GET /field/settlements/{id}` (timed: that request, cold) and then served
  from disk (the same request again, warm); its size and tile count.
* **download**: sign in as a mapper, choose the settlement with the most structures,
  `Download for offline`; bytes are the response bodies Chromium received for the
  first visit plus the download (the app's files, MapLibre, the package and the tile
  archive; as sent), and the package alone, raw and as sent; the time runs from the
  click to the page saying `Ready offline`.
* **sync**: 100 structures saved with `New structure` (each its own outbox item and
  `Idempotency-Key`), then one `Sync`; the time runs from the click to `0 waiting`.

Loopback network: the figures are the server's and the page's own cost, not a
phone network's.  ``python -m bench.field`` runs it alone (it needs only the bench
cluster, not the 1M-structure database ``make bench`` loads); ``make bench`` runs it too.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
from sqlalchemy import create_engine

from bench.common import OUT, BenchContext, markdown_table, write_section
from geo.core.auth import create_token
from geo.core.cluster import EmbeddedCluster, ensure_postgis
from geo.core.db import migrate
from geo.core.settings import Settings
from geo.demo.generator import generate
from geo.demo.loader import load
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, wait_until
from tests.support.server import makazi_on

DATABASE = "makazi_bench_field"
QUEUED = 100


def _database(ctx: BenchContext, structures: int) -> tuple[str, str]:
    """The demo database (made afresh) and a mapper token."""
    url = ctx.cluster.create_database(DATABASE, drop=True)
    migrate(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        load(conn, generate(structures, seed=7), audited=False)
        token = create_token(conn, name="bench-field", role="mapper")
    engine.dispose()
    return url, token


def _largest(base: str) -> tuple[int, str, dict[str, float]]:
    """The settlement with the most structures, its name, and the archive's build times."""
    features = httpx.get(
        f"{base}/collections/structures/items",
        params={"limit": 10_000, "skipGeometry": "true"},
        timeout=120,
    ).json()["features"]
    counts: dict[int, int] = {}
    for f in features:
        sid = f["properties"]["settlement_id"]
        counts[sid] = counts.get(sid, 0) + 1
    sid = max(counts, key=lambda k: counts[k])
    times = {}
    for name in ("cold_s", "warm_s"):
        start = time.perf_counter()
        info = httpx.get(f"{base}/field/settlements/{sid}", timeout=600).json()
        times[name] = time.perf_counter() - start
    return sid, str(info["name"]), times


def _drive(base: str, token: str, sid: int) -> dict[str, Any]:
    from playwright.sync_api import expect, sync_playwright

    figures: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        info = httpx.get(f"{base}/field/settlements/{sid}").json()
        lon = (info["bbox"][0] + info["bbox"][2]) / 2
        lat = (info["bbox"][1] + info["bbox"][3]) / 2
        context = browser.new_context(
            viewport={"width": 360, "height": 740},
            is_mobile=True,
            permissions=["geolocation"],
            geolocation={"longitude": lon, "latitude": lat, "accuracy": 5},
        )
        page = context.new_page()
        received: list[int] = []
        page.on("requestfinished", lambda r: received.append(r.sizes()["responseBodySize"]))
        page.goto(f"{base}/field")
        wait_until(page, "window.makaziField && window.makaziField.ready === true", 60_000)
        page.get_by_label("Token").fill(token)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_label("Settlement").select_option(str(sid))
        expect(page.locator("#package-size")).to_contain_text("Download size", timeout=120_000)
        start = time.perf_counter()
        page.get_by_role("button", name="Download for offline").click()
        expect(page.get_by_text("Ready offline")).to_be_visible(timeout=300_000)
        figures["ready_s"] = time.perf_counter() - start
        figures["package_bytes"] = info["bytes"]
        figures["tiles_bytes"] = info["tiles_bytes"]
        figures["tiles"] = info["tiles"]
        figures["page_download_bytes"] = page.evaluate(
            "() => window.makaziField.lastDownload.bytes"
        )
        with httpx.stream("GET", f"{base}/field/settlements/{sid}/package") as wire:
            figures["package_wire_bytes"] = sum(len(c) for c in wire.iter_raw())
        figures["structures"] = info["structures"]
        time.sleep(1)  # the service worker's own fetches finish
        figures["first_visit_bytes"] = sum(received)

        for i in range(QUEUED):
            page.get_by_role("button", name="New structure").click()
            page.get_by_label("Structure number").fill(f"BENCH-{i:03d}")
            page.get_by_label("Use", exact=True).select_option("residential")
            page.get_by_role("button", name="Use my location").click()
            expect(page.locator("#position")).to_contain_text("±5 m")
            page.get_by_role("button", name="Save", exact=True).click()
            expect(page.locator("#structure-form")).to_be_hidden()
        expect(page.get_by_text(f"{QUEUED} waiting", exact=True)).to_be_visible()
        start = time.perf_counter()
        page.get_by_role("button", name="Sync").click()
        expect(page.get_by_text("0 waiting", exact=True)).to_be_visible(timeout=300_000)
        figures["sync_s"] = time.perf_counter() - start
        figures["sync_page_ms"] = page.evaluate("() => window.makaziField.lastSync.ms")
        browser.close()
    return figures


def run(ctx: BenchContext) -> str:
    """Measure and return the Markdown section."""
    structures = int(os.environ.get("MAKAZI_DEMO_STRUCTURES", Settings().demo_structures))
    url, token = _database(ctx, structures)
    try:
        with makazi_on(url) as (base, _process):
            sid, name, built = _largest(base)
            f = _drive(base, token, sid)
            created = httpx.get(
                f"{base}/collections/structures/items",
                params={"filter": "structure_number LIKE 'BENCH-%'", "limit": 1000},
            ).json()["features"]
    finally:
        ctx.cluster.drop_database(DATABASE)
    assert len(created) == QUEUED, f"{len(created)} structures after sync, not {QUEUED}"
    table = markdown_table(
        ["measure", "value"],
        [
            ["settlement (the demo's largest)", f"{name}: {f['structures']:,} structures"],
            ["package (boundary, structures, facilities JSON)", f"{f['package_bytes']:,} B"],
            ["  the same on the wire (gzip)", f"{f['package_wire_bytes']:,} B"],
            [
                "tile archive (PMTiles, z14-18, gzipped MVT inside)",
                f"{f['tiles_bytes']:,} B, {f['tiles']:,} tiles",
            ],
            ["  built by the first size request (cold)", f"{built['cold_s']:.2f} s"],
            ["  the same request again (archive on disk)", f"{built['warm_s']:.3f} s"],
            ["bytes the page stored: package + archive", f"{f['page_download_bytes']:,} B"],
            [
                "bytes received by the page: first visit + download (gzip)",
                f"{f['first_visit_bytes']:,} B",
            ],
            ["click `Download for offline` -> `Ready offline`", f"{f['ready_s']:.2f} s"],
            [f"`Sync` of {QUEUED} queued structures -> `0 waiting`", f"{f['sync_s']:.2f} s"],
            ["  the same, timed in the page", f"{f['sync_page_ms'] / 1000:.2f} s"],
            ["structures on the server afterwards", f"{len(created)} (no duplicates)"],
        ],
    )
    return (
        f"The field app (`/field`) in headless Chromium at 360x740 on loopback, against the "
        f"demo's {structures:,} structures (seed 7). The machine (2 cores) was shared with "
        f"other sessions' tests while this ran: times vary from run to run, bytes do not.\n\n"
        f"{table}\n"
    )


def main() -> None:
    """Run on its own: the bench cluster without the 1M-structure database."""
    ensure_postgis(install=os.geteuid() == 0, quiet=True)
    OUT.mkdir(parents=True, exist_ok=True)
    cluster = EmbeddedCluster(OUT / "data")
    cluster.start()
    ctx = BenchContext(cluster=cluster, url="", conninfo="", structures=0, out=OUT)
    body = run(ctx)
    print(body)
    write_section("field", body)


if __name__ == "__main__":
    main()
