"""``HEAD`` answers what ``GET`` would, headers only."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from geo.core.settings import Settings
from geo.exports.stream import export_format
from geo.exports.worker import export_workers


@pytest.mark.parametrize(
    "path",
    ["/healthz", "/collections", "/collections/structures/items?limit=1", "/tiles/tilejson.json"],
)
def test_head_has_the_get_headers_and_no_body(client: TestClient, path: str) -> None:
    got = client.get(path)
    head = client.head(path)
    assert got.status_code == 200, got.text
    assert head.status_code == 200, head.text
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    for name in ("etag", "cache-control", "content-crs"):
        assert head.headers.get(name) == got.headers.get(name), name


def test_head_of_a_missing_feature_is_404(client: TestClient) -> None:
    head = client.head("/collections/structures/items/987654321")
    assert head.status_code == 404
    assert head.content == b""


@pytest.mark.parametrize("fmt", ["gpkg", "shp"])
def test_head_of_an_export_takes_no_worker(
    client: TestClient, token_for: Callable[..., dict[str, str]], app_settings: Settings, fmt: str
) -> None:
    """With every export worker busy, a ``GET`` of a GeoPackage is refused (503); a ``HEAD``
    of a format GDAL writes still answers with the headers: it starts no worker."""
    workers = export_workers(app_settings.export_workers)
    taken = 0
    while workers._slots.acquire(blocking=False):
        taken += 1
    try:
        head = client.head(f"/exports/structures?format={fmt}", headers=token_for("planner"))
        got = client.get("/exports/structures?format=gpkg", headers=token_for("planner"))
    finally:
        for _ in range(taken):
            workers._slots.release()
    assert got.status_code == 503, got.text
    assert head.status_code == 200, head.text
    assert head.content == b"" and "content-length" not in head.headers
    made = export_format(fmt)
    assert head.headers["content-disposition"] == (
        f'attachment; filename="structures.{made.extension}"'
    )
    assert head.headers["content-type"] == made.media_type
    assert head.headers["cache-control"] == "private, no-store"


def test_head_of_an_export_checks_like_a_get(
    client: TestClient, token_for: Callable[..., dict[str, str]]
) -> None:
    kml = "/exports/structures?format=kml"
    got = client.get(kml, headers=token_for("planner"))
    head = client.head(kml, headers=token_for("planner"))
    assert got.status_code == head.status_code == 200 and head.content == b""
    for name in ("content-type", "content-disposition", "cache-control"):
        assert head.headers[name] == got.headers[name], name
    assert client.head("/exports/structures?format=gpkg").status_code == 401
    unknown = client.head("/exports/structures?format=dxf", headers=token_for("planner"))
    assert unknown.status_code == 400
    missing = client.head(
        "/exports/structures?format=gpkg&settlement_id=987654", headers=token_for("planner")
    )
    assert missing.status_code == 404
