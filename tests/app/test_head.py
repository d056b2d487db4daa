"""``HEAD`` answers what ``GET`` would, headers only."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient


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
