"""The field app's server side: files, settings, packages, conflicts, idempotent edits."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, text

Headers = Callable[..., dict[str, str]]
RING = [[36.780, -1.310], [36.790, -1.310], [36.790, -1.300], [36.780, -1.300], [36.780, -1.310]]


@pytest.fixture
def settlement_id(connection: Connection) -> int:
    return int(
        connection.execute(
            text(
                "INSERT INTO settlements (name, geom) VALUES ('Field test', "
                "ST_GeomFromText('MULTIPOLYGON(((36.78 -1.31,36.79 -1.31,36.79 -1.30,36.78 -1.30,"
                "36.78 -1.31)))', 4326)) RETURNING id"
            )
        ).scalar_one()
    )


def create(client: TestClient, headers: dict[str, str], **props: Any) -> dict[str, Any]:
    body = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [36.785, -1.305]},
        "properties": {"structure_number": "F-1", "use": "residential", **props},
    }
    response = client.post(
        "/collections/structures/items",
        content=json.dumps(body),
        headers={**headers, "Content-Type": "application/geo+json"},
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def patch(
    client: TestClient,
    headers: dict[str, str],
    fid: int,
    version: int,
    key: str | None,
    **props: Any,
) -> Any:
    extra = {"Idempotency-Key": key} if key else {}
    return client.patch(
        f"/collections/structures/items/{fid}",
        content=json.dumps({"type": "Feature", "properties": props}),
        headers={**headers, **extra, "If-Match": f'"{version}"'},
    )


def test_page_manifest_and_service_worker_are_served(client: TestClient) -> None:
    page = client.get("/field")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "Content-Security-Policy" in page.headers
    assert 'rel="manifest"' in page.text
    manifest = client.get("/field/manifest.webmanifest")
    assert manifest.headers["content-type"].startswith("application/manifest+json")
    assert {"192x192", "512x512"} <= {i["sizes"] for i in manifest.json()["icons"]}
    worker = client.get("/field/sw.js")
    assert worker.headers["service-worker-allowed"] == "/field"
    for name in ("field.js", "field.css", "icon.svg", "icon-192.png", "icon-512.png"):
        assert client.get(f"/field/{name}").status_code == 200, name
    assert client.get("/field/secrets.txt").status_code == 404
    # every file the service worker keeps is one the server serves
    listed = worker.text.split("var FILES = [")[1].split("]")[0]
    for path in json.loads("[" + listed + "]"):
        assert client.get(path).status_code == 200, path


def test_config_and_me(client: TestClient, token_for: Headers) -> None:
    config = client.get("/field/config.json").json()
    assert config["max_accuracy_m"] == 20
    assert config["uses"][0] == "residential" and "water_point" in config["uses"]
    assert client.get("/field/me").status_code == 401
    me = client.get("/field/me", headers=token_for("enumerator", "akinyi")).json()
    assert me == {"name": "akinyi", "role": "enumerator"}


def test_package_has_the_settlements_features_and_changes_with_them(
    client: TestClient, token_for: Headers, settlement_id: int
) -> None:
    mapper = token_for("mapper")
    made = create(client, mapper, position_accuracy_m=4.5)
    info = client.get(f"/field/settlements/{settlement_id}").json()
    assert info["structures"] == 1 and info["facilities"] == 0
    package = client.get(f"/field/settlements/{settlement_id}/package")
    assert package.status_code == 200
    assert len(package.content) == info["bytes"]
    assert package.headers["etag"] == info["etag"]
    body = package.json()
    assert body["settlement"]["name"] == "Field test"
    assert body["boundary"]["geometry"]["type"] == "MultiPolygon"
    (structure,) = body["structures"]["features"]
    assert structure["id"] == made["id"]
    assert structure["properties"]["version"] == 1
    assert structure["properties"]["position_accuracy_m"] == 4.5
    again = client.get(
        f"/field/settlements/{settlement_id}/package", headers={"If-None-Match": info["etag"]}
    )
    assert again.status_code == 304
    patch(client, mapper, made["id"], 1, None, storeys=2)
    changed = client.get(
        f"/field/settlements/{settlement_id}/package", headers={"If-None-Match": info["etag"]}
    )
    assert changed.status_code == 200
    assert changed.json()["structures"]["features"][0]["properties"]["storeys"] == 2
    assert client.get("/field/settlements/987654321").status_code == 404


def test_a_new_household_makes_a_new_package_with_its_count(
    client: TestClient, token_for: Headers, settlement_id: int
) -> None:
    enumerator = token_for("enumerator")
    fid = create(client, enumerator)["id"]
    before = client.get(f"/field/settlements/{settlement_id}").json()
    added = client.post(
        f"/structures/{fid}/households",
        json={"head_name": "Achieng", "members": 3},
        headers=enumerator,
    )
    assert added.status_code == 201, added.text
    after = client.get(f"/field/settlements/{settlement_id}").json()
    assert after["etag"] != before["etag"]
    body = client.get(f"/field/settlements/{settlement_id}/package").json()
    (structure,) = [f for f in body["structures"]["features"] if f["id"] == fid]
    assert structure["properties"]["households"] == 1
    assert "Achieng" not in json.dumps(body)


def test_a_retried_patch_with_its_key_is_not_a_conflict_with_itself(
    client: TestClient, token_for: Headers, settlement_id: int
) -> None:
    mapper = token_for("mapper")
    fid = create(client, mapper)["id"]
    first = patch(client, mapper, fid, 1, "edit-1", wall_material="mud")
    assert first.status_code == 200 and first.json()["properties"]["version"] == 2
    retry = patch(client, mapper, fid, 1, "edit-1", wall_material="mud")
    assert retry.status_code == 200
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json()["properties"]["version"] == 2
    # without the key the same stale edit is refused, and a key reused for another edit is 422
    assert patch(client, mapper, fid, 1, None, wall_material="mud").status_code == 412
    assert patch(client, mapper, fid, 1, "edit-1", wall_material="stone").status_code == 422


def test_a_conflict_is_kept_field_by_field_for_reviewers(
    client: TestClient, token_for: Headers, settlement_id: int
) -> None:
    mapper, planner = token_for("mapper", "otieno"), token_for("planner")
    fid = create(client, mapper, wall_material="mud", storeys=1)["id"]
    assert patch(client, planner, fid, 1, None, wall_material="brick").status_code == 200
    refused = patch(client, mapper, fid, 1, None, wall_material="stone", storeys=2)
    assert refused.status_code == 412
    report = {
        "collection": "structures",
        "feature_id": fid,
        "base_version": 1,
        "base": {"wall_material": "mud", "storeys": 1},
        "mine": {"wall_material": "stone", "storeys": 2},
    }
    posted = client.post(
        "/conflicts", json=report, headers={**mapper, "Idempotency-Key": "report-1"}
    )
    assert posted.status_code == 201, posted.text
    record = posted.json()
    assert record["theirs_version"] == 2 and record["created_by"] == "otieno"
    assert record["fields"] == {
        "wall_material": {"base": "mud", "theirs": "brick", "mine": "stone"},
        "storeys": {"base": 1, "theirs": 1, "mine": 2},
    }
    again = client.post(
        "/conflicts", json=report, headers={**mapper, "Idempotency-Key": "report-1"}
    )
    assert again.json()["id"] == record["id"]
    assert client.get("/conflicts", headers=mapper).status_code == 403
    listed = client.get("/conflicts", params={"feature_id": fid}, headers=planner).json()
    assert [c["id"] for c in listed["conflicts"]] == [record["id"]]
    assert listed["conflicts"][0]["resolution"] is None
    other = token_for("mapper", "someone-else")
    url = f"/conflicts/{record['id']}/resolution"
    assert client.post(url, json={"resolution": "mine"}, headers=other).status_code == 403
    assert client.post(url, json={"resolution": "both"}, headers=mapper).status_code == 422
    settled = client.post(url, json={"resolution": "mine"}, headers=mapper).json()
    assert settled["resolution"] == "mine" and settled["resolved_by"] == "otieno"


def test_a_conflicting_move_keeps_the_three_places(
    client: TestClient, token_for: Headers, settlement_id: int
) -> None:
    mapper, planner = token_for("mapper"), token_for("planner")
    fid = create(client, mapper)["id"]
    theirs = {"type": "Point", "coordinates": [36.786, -1.305]}
    moved = client.patch(
        f"/collections/structures/items/{fid}",
        content=json.dumps({"type": "Feature", "geometry": theirs, "properties": {}}),
        headers={**planner, "If-Match": '"1"'},
    )
    assert moved.status_code == 200, moved.text
    base = {"type": "Point", "coordinates": [36.785, -1.305]}
    mine = {"type": "Point", "coordinates": [36.7851, -1.3052]}
    report = {
        "collection": "structures",
        "feature_id": fid,
        "base_version": 1,
        "base": {"geometry": base, "position_accuracy_m": None},
        "mine": {"geometry": mine, "position_accuracy_m": 4.5},
    }
    posted = client.post("/conflicts", json=report, headers={**mapper, "Idempotency-Key": "mv-1"})
    assert posted.status_code == 201, posted.text
    fields = posted.json()["fields"]
    assert fields["geometry"] == {"base": base, "theirs": theirs, "mine": mine}
    assert fields["position_accuracy_m"] == {"base": None, "theirs": None, "mine": 4.5}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"collection": "households"}, "collection"),
        ({"feature_id": "7"}, "feature_id"),
        ({"base_version": 0}, "base_version"),
        ({"mine": []}, "mine"),
    ],
)
def test_a_bad_conflict_report_names_its_field(
    client: TestClient, token_for: Headers, change: dict[str, Any], field: str
) -> None:
    report = {
        "collection": "structures",
        "feature_id": 1,
        "base_version": 1,
        "base": {},
        "mine": {},
    }
    response = client.post("/conflicts", json={**report, **change}, headers=token_for("mapper"))
    assert response.status_code == 422
    assert response.json()["field"] == field


def test_a_conflict_on_an_unchanged_feature_is_refused(
    client: TestClient, token_for: Headers, settlement_id: int
) -> None:
    mapper = token_for("mapper")
    fid = create(client, mapper)["id"]
    report = {
        "collection": "structures",
        "feature_id": fid,
        "base_version": 1,
        "base": {},
        "mine": {"use": "school"},
    }
    assert client.post("/conflicts", json=report, headers=mapper).status_code == 409
    report["feature_id"] = 10**12
    assert client.post("/conflicts", json=report, headers=mapper).status_code == 404
