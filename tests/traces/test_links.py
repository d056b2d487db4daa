"""Links carry their query parameters encoded: an owner with ``&`` stays one parameter."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from fastapi.testclient import TestClient

from tests.traces.test_traces import Auth, upload, walk


def test_next_link_keeps_an_owner_with_ampersand(client: TestClient, token_for: Auth) -> None:
    owner = "amina & co=1"
    headers = token_for("mapper", name=owner)
    for start in (0, 20):
        assert upload(client, headers, walk(5, start=start)).status_code == 201
    page = client.get("/traces", params={"owner": owner, "limit": 1}, headers=headers)
    assert page.status_code == 200, page.text
    links = {link["rel"]: link["href"] for link in page.json()["links"]}
    query = parse_qs(urlsplit(links["next"]).query)
    assert query["owner"] == [owner]
    assert query["limit"] == ["1"] and query["offset"] == ["1"]
    following = client.get(links["next"], headers=headers)
    assert following.status_code == 200
    (trace,) = following.json()["traces"]
    assert trace["owner"] == owner
