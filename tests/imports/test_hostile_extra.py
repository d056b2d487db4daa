"""Files whose names or text are not in the encoding they declare: a 4xx, never a 500."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient


def test_non_utf8_geojson_is_a_clear_4xx(
    client: TestClient, token_for: Callable[..., dict[str, str]]
) -> None:
    body = b'{"type":"FeatureCollection","name":"r\xc7\xff","features":[{"type":"Feature",'
    body += b'"properties":{"n\xc7\xff":1},"geometry":{"type":"Point","coordinates":[36.8,-1.3]}}]}'
    response = client.post(
        "/imports",
        files={"file": ("odd.geojson", body, "application/geo+json")},
        data={"collection": "facilities"},
        headers=token_for("mapper"),
    )
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
