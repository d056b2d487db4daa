"""SQL injection through every parameter that reaches SQL: refused or harmless, nothing changed.

Each probe goes through a parameter that ends up in a statement: property
filters (names and values), ``sortby``, ``bbox``, ``crs``/``bbox-crs``,
``datetime``, CQL2 text and JSON, ids in paths, analysis parameters, and the
properties of a written feature. The answer must be a 4xx problem or a
normal 200 that treats the probe as data; no 5xx; and every table is exactly
as before.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, text

from geo.demo.generator import generate
from geo.demo.loader import load

PROBES = [
    "' OR '1'='1",
    "1; DROP TABLE structures; --",
    "1) OR (1=1",
    "x'); DELETE FROM households; --",
    "$$; DELETE FROM settlements; $$",
    "1 UNION SELECT head_name FROM households",
    "\\'; SELECT pg_sleep(10); --",
    "use = 'school'; UPDATE structures SET storeys = 99",
    '"; TRUNCATE traces; --',
    "%27%20OR%201%3D1",
]


def digest(conn: Connection) -> dict[str, str]:
    tables = ("settlements", "structures", "households", "facilities", "traces")
    return {
        t: conn.execute(
            text(
                f"SELECT count(*) || md5(coalesce(string_agg(x::text, '' ORDER BY x::text), '')) "
                f"FROM {t} x"
            )
        ).scalar_one()
        for t in tables
    }


def urls(probe: str) -> list[str]:
    q = quote(probe, safe="")
    items = "/collections/structures/items"
    return [
        f"{items}?use={q}",
        f"{items}?structure_number={q}",
        f"{items}?{q}=1",
        f"{items}?sortby={q}",
        f"{items}?bbox={q}",
        f"{items}?bbox=36.7,-1.4,36.9,-1.2&bbox-crs={q}",
        f"{items}?crs={q}",
        f"{items}?datetime={q}",
        f"{items}?filter={q}",
        f"{items}?filter={quote(json.dumps({'op': '=', 'args': [{'property': probe}, 1]}))}"
        "&filter-lang=cql2-json",
        f"{items}?filter={quote(json.dumps({'op': '=', 'args': [{'property': 'use'}, probe]}))}"
        "&filter-lang=cql2-json",
        f"{items}?filter-lang={q}&filter=storeys%3D1",
        f"{items}?after={q}",
        f"{items}/{q}",
        f"/collections/{q}/items",
        f"/settlements/{q}/summary",
        f"/analysis/access?facility_type={q}&max_distance_m=100",
        f"/analysis/density?settlement_id={q}&cell_m=100",
        f"/traces?visibility={q}",
        f"/exports/structures?format={q}",
    ]


@pytest.mark.parametrize("probe", PROBES)
def test_probes_are_refused_or_harmless(
    client: TestClient,
    connection: Connection,
    token_for: Callable[..., dict[str, str]],
    probe: str,
) -> None:
    load(connection, generate(60, seed=13))
    admin = token_for("admin")
    before = digest(connection)  # the token is a row too
    for url in urls(probe):
        response = client.get(url, headers=admin)
        assert response.status_code < 500, (url, response.text[:300])
        if response.status_code >= 400:
            assert response.headers["content-type"].startswith("application/problem+json")
        elif "items" in url and response.headers["content-type"].startswith("application/geo"):
            # a probe read as a value matches nothing, never everything
            assert response.json()["numberReturned"] < 60, url
    # written as data, a probe stays data
    feature = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [36.787, -1.313]},
        "properties": {"type": "water_point", "name": probe, "condition": probe},
    }
    refused = client.post("/collections/facilities/items", json=feature, headers=admin)
    assert refused.status_code == 422 and "condition" in refused.json()["detail"]
    del feature["properties"]["condition"]  # type: ignore[attr-defined]
    stored = client.post("/collections/facilities/items", json=feature, headers=admin)
    assert stored.status_code == 201, stored.text
    assert stored.json()["properties"]["name"] == probe
    client.delete(stored.headers["location"], headers={**admin, "If-Match": stored.headers["etag"]})
    connection.execute(text("DELETE FROM facilities WHERE name = :p"), {"p": probe})
    assert digest(connection) == before
