"""Households: enumerator+ only, versioned, counted on the structure, never leaked."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, text

Headers = Callable[..., dict[str, str]]
PERSON = {
    "head_name": "Achieng Otieno",
    "phone": "0712345678",
    "members": 4,
    "tenure": "tenant",
    "rent_kes": 2500,
    "years_in_settlement": 6,
}


@pytest.fixture
def structure_id(connection: Connection) -> int:
    return int(
        connection.execute(
            text(
                "INSERT INTO structures (structure_number, use, geom) "
                "VALUES ('H-1', 'residential', "
                "ST_GeomFromText('POINT(36.785 -1.305)', 4326)) RETURNING id"
            )
        ).scalar_one()
    )


def test_enumerator_records_and_reads(
    client: TestClient, token_for: Headers, structure_id: int
) -> None:
    enumerator = token_for("enumerator", "juma")
    created = client.post(f"/structures/{structure_id}/households", json=PERSON, headers=enumerator)
    assert created.status_code == 201, created.text
    assert created.headers["etag"] == '"1"'
    record = created.json()
    assert record["head_name"] == "Achieng Otieno" and record["structure_id"] == structure_id
    listed = client.get(f"/structures/{structure_id}/households", headers=enumerator).json()
    assert [h["id"] for h in listed["households"]] == [record["id"]]
    one = client.get(created.headers["location"], headers=enumerator)
    assert one.json()["phone"] == "0712345678"
    assert one.headers["cache-control"].startswith("private")


@pytest.mark.parametrize("role", ["viewer", "mapper"])
def test_lower_roles_are_refused(
    client: TestClient, token_for: Headers, structure_id: int, role: str
) -> None:
    headers = token_for(role)
    assert client.get(f"/structures/{structure_id}/households", headers=headers).status_code == 403
    assert (
        client.post(
            f"/structures/{structure_id}/households", json=PERSON, headers=headers
        ).status_code
        == 403
    )
    assert client.get(f"/structures/{structure_id}/households").status_code == 401


def test_counts_visible_personal_fields_never(
    client: TestClient, token_for: Headers, structure_id: int
) -> None:
    enumerator = token_for("enumerator")
    for _ in range(2):
        client.post(f"/structures/{structure_id}/households", json=PERSON, headers=enumerator)
    feature = client.get(f"/collections/structures/items/{structure_id}").json()
    assert feature["properties"]["households"] == 2
    page = client.get("/collections/structures/items", headers=token_for("planner"))
    assert "Achieng" not in page.text and "0712345678" not in page.text
    refused = client.get(
        "/collections/structures/items", params={"filter": "head_name = 'Achieng Otieno'"}
    )
    assert refused.status_code == 400
    assert "Achieng" not in refused.json()["detail"]
    assert (
        client.get("/collections/structures/items", params={"phone": "0712345678"}).status_code
        == 400
    )


def test_versioned_updates_and_soft_delete(
    client: TestClient, token_for: Headers, structure_id: int, connection: Connection
) -> None:
    enumerator = token_for("enumerator")
    record = client.post(
        f"/structures/{structure_id}/households", json=PERSON, headers=enumerator
    ).json()
    url = f"/households/{record['id']}"
    assert client.patch(url, json={"members": 5}, headers=enumerator).status_code == 428
    stale = client.patch(url, json={"members": 5}, headers={**enumerator, "If-Match": '"9"'})
    assert stale.status_code == 412
    ok = client.patch(
        url, json={"members": 5, "phone": None}, headers={**enumerator, "If-Match": '"1"'}
    )
    assert ok.status_code == 200 and ok.json()["members"] == 5 and ok.json()["phone"] is None
    bad = client.patch(url, json={"tenure": "squatter"}, headers={**enumerator, "If-Match": "2"})
    assert bad.status_code == 422 and "tenure" in bad.json()["detail"]
    assert client.delete(url, headers={**enumerator, "If-Match": '"2"'}).status_code == 204
    assert client.get(url, headers=enumerator).status_code == 404
    count = connection.execute(
        text("SELECT households FROM structures WHERE id = :i"), {"i": structure_id}
    ).scalar()
    assert count == 0
    actions = (
        connection.execute(
            text(
                "SELECT action FROM feature_history "
                "WHERE collection = 'households' AND feature_id = :i "
                "ORDER BY version"
            ),
            {"i": record["id"]},
        )
        .scalars()
        .all()
    )
    assert actions == ["create", "update", "delete"]


def test_bad_household_input(client: TestClient, token_for: Headers, structure_id: int) -> None:
    enumerator = token_for("enumerator")
    for body, needle in [
        ({"members": -1}, "members"),
        ({"shoe_size": 4}, "shoe_size"),
        ({"head_name": "x" * 500}, "head_name"),
    ]:
        response = client.post(
            f"/structures/{structure_id}/households", json=body, headers=enumerator
        )
        assert response.status_code == 422 and needle in response.json()["detail"]
        assert "x" * 50 not in response.text
    missing = client.post("/structures/999999/households", json=PERSON, headers=enumerator)
    assert missing.status_code == 404
    not_json = client.post(
        f"/structures/{structure_id}/households", content=b"{oops", headers=enumerator
    )
    assert not_json.status_code == 400


def test_household_idempotency(
    client: TestClient, token_for: Headers, structure_id: int, connection: Connection
) -> None:
    headers = {**token_for("enumerator"), "Idempotency-Key": "hh-1"}
    first = client.post(
        f"/structures/{structure_id}/households", content=json.dumps(PERSON), headers=headers
    )
    second = client.post(
        f"/structures/{structure_id}/households", content=json.dumps(PERSON), headers=headers
    )
    assert first.json()["id"] == second.json()["id"]
    assert (
        connection.execute(
            text("SELECT count(*) FROM households WHERE structure_id = :s"), {"s": structure_id}
        ).scalar()
        == 1
    )
