"""Profiles: computed fields equal the summary, reported fields round-trip with If-Match."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, text

from tests.profiles.conftest import Kisima, backdate

Headers = Callable[..., dict[str, str]]

REPORTED = {
    "population_reported": 95,
    "forum_date": "2026-11-14",
    "land_ownership": {"government": 60, "private": 30, "unknown": 10},
    "hazards": ["flooding", "fire"],
    "eviction_threat": "medium",
    "water_cost_kes_per_20l": 5,
    "electricity": "informal",
    "priorities": ["water", "drainage", "security of tenure"],
}


def _profile(client: TestClient, sid: int, headers: dict[str, str], **params: Any) -> Any:
    answer = client.get(f"/settlements/{sid}/profile", headers=headers, params=params)
    assert answer.status_code == 200, answer.text
    return answer


def test_profile_round_trips_with_if_match(
    client: TestClient, connection: Connection, token_for: Headers, kisima: Kisima
) -> None:
    planner = token_for("planner", "otieno")
    url = f"/settlements/{kisima.settlement}/profile"
    first = _profile(client, kisima.settlement, planner)
    assert first.headers["ETag"] == '"0"' and first.json()["version"] == 0
    assert first.json()["fields"]["hazards"] == {"value": None, "basis": "reported"}
    body = {"fields": REPORTED}
    assert client.put(url, json=body, headers=planner).status_code == 428
    created = client.put(url, json=body, headers={**planner, "If-Match": '"0"'})
    assert created.status_code == 200, created.text
    assert created.headers["ETag"] == '"1"'
    fields = created.json()["fields"]
    for name, value in REPORTED.items():
        assert fields[name] == {"value": value, "basis": "reported"}
    # read, change, write back the whole answer (computed fields included, ignored)
    read = _profile(client, kisima.settlement, planner)
    document = read.json()
    document["fields"]["eviction_threat"]["value"] = "high"
    document["fields"]["notes"] = {"value": "agreed at the forum", "basis": "reported"}
    changed = client.put(url, json=document, headers={**planner, "If-Match": read.headers["ETag"]})
    assert changed.status_code == 200, changed.text
    assert changed.json()["version"] == 2
    assert changed.json()["fields"]["eviction_threat"]["value"] == "high"
    assert changed.json()["fields"]["structures"]["value"] == 16
    stale = client.put(url, json=body, headers={**planner, "If-Match": '"1"'})
    assert stale.status_code == 412
    history = connection.execute(
        text(
            "SELECT version, changed_by, changes FROM feature_history "
            "WHERE collection = 'settlement_profiles' AND feature_id = :id ORDER BY id"
        ),
        {"id": kisima.settlement},
    ).all()
    assert [(h.version, h.changed_by) for h in history] == [(1, "otieno"), (2, "otieno")]
    assert history[1].changes["fields"]["to"]["eviction_threat"] == "high"


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"population_reportd": 3}, "population_reportd"),
        ({"structures": 500}, "structures"),
        ({"households": {"value": 12, "basis": "reported"}}, "households"),
        ({"hazards": ["tsunami"]}, "hazards"),
        ({"land_ownership": {"government": 80, "private": 40}}, "land_ownership"),
        ({"forum_date": "14/11/2026"}, "forum_date"),
        ({"boundary_walked_on": "2026-02-30"}, "boundary_walked_on must be a date"),
        ({"eviction_threat": {"value": "high", "basis": "counted"}}, "eviction_threat"),
    ],
)
def test_bad_fields_are_422_naming_them(
    client: TestClient, token_for: Headers, kisima: Kisima, fields: dict[str, Any], named: str
) -> None:
    answer = client.put(
        f"/settlements/{kisima.settlement}/profile",
        json={"fields": fields},
        headers={**token_for("planner"), "If-Match": '"0"'},
    )
    assert answer.status_code == 422, answer.text
    assert named in answer.json()["detail"]
    assert _profile(client, kisima.settlement, token_for("planner")).json()["version"] == 0


@pytest.mark.parametrize(("role", "status"), [(None, 401), ("viewer", 403), ("enumerator", 403)])
def test_writing_needs_a_planner(
    client: TestClient, token_for: Headers, kisima: Kisima, role: str | None, status: int
) -> None:
    headers = token_for(role) if role else {}
    answer = client.put(
        f"/settlements/{kisima.settlement}/profile",
        json={"fields": {}},
        headers={**headers, "If-Match": '"0"'},
    )
    assert answer.status_code == status


@pytest.mark.parametrize("role", [None, "viewer", "planner"])
def test_computed_fields_equal_the_summary(
    client: TestClient, token_for: Headers, kisima: Kisima, tiny: int, role: str | None
) -> None:
    headers = token_for(role) if role else {}
    for sid in (kisima.settlement, tiny):
        summary = client.get(f"/settlements/{sid}/summary", headers=headers).json()
        profile = _profile(client, sid, headers).json()
        fields = profile["fields"]
        pairs = {
            "structures": "structures",
            "structures_by_use": "structures_by_use",
            "households": "households",
            "people_counted": "people",
            "population": "population_estimate",
            "mean_household_size": "mean_household_size",
            "density_structures_per_ha": "density_structures_per_ha",
            "area_ha": "area_ha",
        }
        for name, member in pairs.items():
            assert fields[name]["value"] == summary[member], name
        assert fields["population"]["basis"] == "estimated"
        assert "household size" in fields["population"]["method"]
        assert fields["structures"]["basis"] == "counted"
        for name, member in pairs.items():
            assert (name in profile["suppressed"]) == (member in summary["suppressed"]), name


def test_facilities_counted_and_working(
    client: TestClient, token_for: Headers, kisima: Kisima
) -> None:
    fields = _profile(client, kisima.settlement, token_for("mapper")).json()["fields"]
    assert fields["water_points"] == {"value": 3, "basis": "counted"}
    assert fields["water_points_working"]["value"] == 2
    assert fields["toilet_blocks"]["value"] == 1
    assert fields["toilet_blocks_working"]["value"] == 1
    assert fields["toilet_structures"]["value"] == 2


def test_small_counts_suppressed_for_the_public(
    client: TestClient, token_for: Headers, tiny: int
) -> None:
    profile = _profile(client, tiny, {}).json()
    for name in ("structures", "households", "people_counted", "water_points"):
        assert profile["fields"][name]["value"] is None, name
        assert name in profile["suppressed"], name
    raw = _profile(client, tiny, token_for("mapper")).json()
    assert raw["fields"]["structures"]["value"] == 3 and raw["suppressed"] == []


def test_verified_profile_counts_verified_rows(
    client: TestClient, token_for: Headers, kisima: Kisima
) -> None:
    planner = token_for("planner")
    client.post(
        f"/settlements/{kisima.settlement}/review",
        json={"to": "verified", "structure_ids": kisima.blocks["KS-01"][:5]},
        headers=planner,
    )
    fields = _profile(client, kisima.settlement, planner, verified="true").json()["fields"]
    assert fields["structures"]["value"] == 5
    # KS-01-001, -002, -004 are residential among the first five: 6 households
    assert fields["households"]["value"] == 6
    assert fields["people_counted"]["value"] == 24


def test_profile_as_of_shows_reported_fields_then(
    client: TestClient, connection: Connection, token_for: Headers, kisima: Kisima
) -> None:
    planner = token_for("planner")
    url = f"/settlements/{kisima.settlement}/profile"
    backdate(connection, 60)  # the settlement was mapped two months ago
    client.put(
        url, json={"fields": {"eviction_threat": "low"}}, headers={**planner, "If-Match": '"0"'}
    )
    # the first version was written a month ago
    backdate(connection, 30, "settlement_profiles")
    client.put(
        url, json={"fields": {"eviction_threat": "high"}}, headers={**planner, "If-Match": '"1"'}
    )
    then = connection.execute(text("SELECT (now() - interval '10 days')::date")).scalar_one()
    past = _profile(client, kisima.settlement, planner, as_of=str(then)).json()
    assert past["fields"]["eviction_threat"]["value"] == "low"
    assert past["version"] == 1
    assert (
        _profile(client, kisima.settlement, planner).json()["fields"]["eviction_threat"]["value"]
        == "high"
    )


def test_bad_as_of_is_400(client: TestClient, kisima: Kisima) -> None:
    answer = client.get(f"/settlements/{kisima.settlement}/profile", params={"as_of": "last year"})
    assert answer.status_code == 400 and "as_of" in answer.json()["detail"]


def test_profile_of_unknown_settlement_is_404(client: TestClient, token_for: Headers) -> None:
    planner = token_for("planner")
    assert client.get("/settlements/987654/profile").status_code == 404
    answer = client.put(
        "/settlements/987654/profile", json={"fields": {}}, headers={**planner, "If-Match": '"0"'}
    )
    assert answer.status_code == 404


def test_profile_body_must_be_an_object_of_fields(
    client: TestClient, token_for: Headers, kisima: Kisima
) -> None:
    headers = {**token_for("planner"), "If-Match": '"0"'}
    url = f"/settlements/{kisima.settlement}/profile"
    assert client.put(url, content=b"{not json", headers=headers).status_code == 400
    for body, named in (([1, 2], "fields"), ({"feilds": {}}, "feilds"), ({"fields": []}, "fields")):
        answer = client.put(url, json=body, headers=headers)
        assert answer.status_code == 422, answer.text
        assert named in answer.json()["detail"]
