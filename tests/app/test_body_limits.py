"""Every operation that takes a body refuses one over its limit: 413 problem+json.

The operations are the app's routes (so a new one is covered, or this test
fails for it), each sent a body one byte over 1 MB (``MAKAZI_MAX_JSON_BODY_MB``
and ``MAKAZI_MAX_UPLOAD_MB`` both 1) with an admin token and ids of 1: the
size is refused before anything is looked up or written.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from geo.core.settings import Settings

LIMIT = 1024 * 1024
NO_BODY = {("POST", "/traces/{trace_id}/boundary")}
"""Operations that take their input in the query and never read a body."""


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_json_body_mb": 1, "max_upload_mb": 1})


def _operations(client: TestClient) -> list[tuple[str, str, str]]:
    """Every POST, PUT and PATCH route of the app, with the body's media type."""
    from fastapi.routing import APIRoute

    media = {"/traces": "application/gpx+xml", "/imports": "multipart/form-data"}

    def routes(holder: Any, prefix: str = "") -> list[tuple[str, APIRoute]]:
        found = []
        for route in holder.routes:
            if isinstance(route, APIRoute):
                found.append((prefix + route.path, route))
            elif hasattr(route, "original_router"):  # an included router (FastAPI 0.12x)
                inner = route.original_router
                found += routes(inner, prefix + getattr(route, "prefix", ""))
        return found

    app: Any = client.app
    return sorted(
        (method, path, media.get(path, "application/json"))
        for path, route in routes(app)
        for method in route.methods & {"POST", "PUT", "PATCH"}
        if (method, path) not in NO_BODY
    )


def _oversized(media: str) -> tuple[bytes, str]:
    if media == "multipart/form-data":
        boundary = "limit-boundary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="collection"\r\n\r\n'
            f'structures\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="big.geojson"\r\nContent-Type: application/geo+json\r\n\r\n'
        ).encode()
        body = head + b" " * (LIMIT + 64 * 1024) + f"\r\n--{boundary}--\r\n".encode()
        return body, f"multipart/form-data; boundary={boundary}"
    if "json" in media:
        return b'{"properties": {"notes": "' + b"x" * LIMIT + b'"}}', media
    return b"<gpx>" + b" " * LIMIT + b"</gpx>", media


def test_every_body_has_a_limit(
    client: TestClient, token_for: Callable[..., dict[str, str]]
) -> None:
    operations = _operations(client)
    assert len(operations) >= 10, operations  # the API's writes were found
    print(len(operations), "operations with a body")  # with -s
    admin = token_for("admin")
    wrong = []
    for method, path, media in operations:
        url = re.sub(r"\{[^}]+\}", "1", path.replace("{collection_id}", "structures"))
        body, content_type = _oversized(media)
        response = client.request(
            method,
            url,
            content=body,
            headers={**admin, "Content-Type": content_type, "If-Match": '"1"'},
        )
        problem = response.headers.get("content-type", "").startswith("application/problem+json")
        if response.status_code != 413 or not problem:
            wrong.append((method, path, media, response.status_code, response.text[:200]))
    assert not wrong, wrong
