"""Security headers: nosniff everywhere, a content security policy and no framing on pages."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from fastapi.testclient import TestClient

from geo.core.settings import Settings


def test_pages_carry_a_policy_and_refuse_framing(client: TestClient) -> None:
    for path, headers in (("/", {"Accept": "text/html"}), ("/map", {}), ("/docs", {})):
        response = client.get(path, headers=headers)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html")
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy, path
        assert "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0], path
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"


def test_docs_allows_exactly_its_inline_script(client: TestClient) -> None:
    response = client.get("/docs")
    scripts = re.findall(r"<script>(.*?)</script>", response.text, re.S)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert f"'sha256-{digest}'" in response.headers["content-security-policy"]


def test_api_answers_are_not_sniffed(client: TestClient) -> None:
    for path in ("/collections", "/api", "/collections/nowhere"):
        response = client.get(path)
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert "content-security-policy" not in response.headers, path


def test_cors_is_off_by_default(client: TestClient) -> None:
    origin = {"Origin": "https://elsewhere.example"}
    plain = client.get("/collections", headers=origin)
    assert "access-control-allow-origin" not in plain.headers
    preflight = client.options(
        "/collections/structures/items",
        headers={**origin, "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


class TestCorsAllowList:
    @pytest.fixture
    def app_settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"cors_origins": ["https://atlas.example"]})

    def test_only_listed_origins_are_allowed(self, client: TestClient) -> None:
        allowed = client.get("/collections", headers={"Origin": "https://atlas.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://atlas.example"
        assert "ETag" in allowed.headers["access-control-expose-headers"]
        other = client.get("/collections", headers={"Origin": "https://elsewhere.example"})
        assert "access-control-allow-origin" not in other.headers
        preflight = client.options(
            "/collections/structures/items",
            headers={
                "Origin": "https://atlas.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "Authorization, If-Match",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://atlas.example"
        refused = client.options(
            "/collections/structures/items",
            headers={
                "Origin": "https://elsewhere.example",
                "Access-Control-Request-Method": "POST",
            },
        )
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers
