"""The 400 problem bodies of the items query parameters, pinned byte for byte.

The items endpoint validates its query parameters with one prebuilt model
(``app.routers.features.ItemsQuery``) instead of FastAPI's per-parameter
declarations; clients see the same problem documents as before: these were
recorded from the declared parameters, with the varying ``request_id`` left
out.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

PATH = "/collections/structures/items"
_INT = "Input should be a valid integer, unable to parse string as an integer"
_LITERAL = "Input should be 'cql2-text' or 'cql2-json'"


def _problem(*errors: tuple[str, str]) -> dict[str, object]:
    return {
        "type": "/problems/invalid-request",
        "title": "Bad Request",
        "status": 400,
        "detail": "; ".join(f"{field}: {reason}" for field, reason in errors),
        "instance": PATH,
        "errors": [{"field": field, "reason": reason} for field, reason in errors],
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("limit=0", _problem(("query.limit", "Input should be greater than or equal to 1"))),
        ("limit=", _problem(("query.limit", _INT))),
        (
            "offset=-1&after=z",
            _problem(
                ("query.after", _INT),
                ("query.offset", "Input should be greater than or equal to 0"),
            ),
        ),
        (
            "filter-lang=ecql&before=1.5",
            _problem(("query.filter-lang", _LITERAL), ("query.before", _INT)),
        ),
        ("limit=5&limit=zero", _problem(("query.limit", _INT))),
    ],
)
def test_items_query_400_bodies(
    client: TestClient, query: str, expected: dict[str, object]
) -> None:
    response = client.get(f"{PATH}?{query}")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    body = json.loads(response.content)
    request_id = body["request_id"]
    assert request_id == response.headers["X-Request-ID"]
    # request_id follows instance, as the service writes it; the bytes are compact JSON
    pinned = {
        **dict(list(expected.items())[:5]),
        "request_id": request_id,
        "errors": expected["errors"],
    }
    assert list(body) == list(pinned)
    assert response.content == json.dumps(pinned, separators=(",", ":")).encode()
