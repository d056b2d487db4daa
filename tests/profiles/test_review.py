"""Review states on structures and households, bulk moves by a planner, verified-only counts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, text

from app.main import create_app
from geo.core.settings import Settings
from tests.profiles.conftest import Kisima
from tests.support.db import BoundDatabase

Headers = Callable[..., dict[str, str]]


def _states(conn: Connection, table: str, ids: list[int]) -> set[str]:
    return set(
        conn.execute(
            text(f"SELECT review_state FROM {table} WHERE id = ANY(:ids)"), {"ids": ids}
        ).scalars()
    )


def test_new_rows_are_collected_and_bad_states_refused(
    connection: Connection, kisima: Kisima
) -> None:
    ids = kisima.blocks["KS-01"]
    assert _states(connection, "structures", ids) == {"collected"}
    with pytest.raises(Exception, match="review_state_check"), connection.begin_nested():
        connection.execute(
            text("UPDATE structures SET review_state = 'approved' WHERE id = :id"), {"id": ids[0]}
        )


def test_patch_review_state_is_versioned_and_in_history(
    client: TestClient, token_for: Headers, kisima: Kisima
) -> None:
    sid = kisima.blocks["KS-02"][0]
    mapper = token_for("mapper")
    feature = client.get(f"/collections/structures/items/{sid}").json()
    assert feature["properties"]["review_state"] == "collected"
    bad = client.patch(
        f"/collections/structures/items/{sid}",
        json={"properties": {"review_state": "approved"}},
        headers={**mapper, "If-Match": '"1"', "Content-Type": "application/merge-patch+json"},
    )
    assert bad.status_code == 422
    assert "review_state" in bad.json()["detail"] and "verified" in bad.json()["detail"]
    done = client.patch(
        f"/collections/structures/items/{sid}",
        json={"properties": {"review_state": "disputed", "review_note": "two doors, not one"}},
        headers={**mapper, "If-Match": '"1"', "Content-Type": "application/merge-patch+json"},
    )
    assert done.status_code == 200, done.text
    assert done.json()["properties"]["version"] == 2
    history = client.get(
        f"/collections/structures/items/{sid}/history", headers=token_for("viewer")
    ).json()["versions"]
    assert history[-1]["changes"]["review_state"] == {"from": "collected", "to": "disputed"}
    assert history[-1]["changes"]["review_note"]["to"] == "two doors, not one"


def test_household_carries_review_state(
    client: TestClient, token_for: Headers, kisima: Kisima
) -> None:
    hid = next(iter(kisima.households.values()))[0]
    enumerator = token_for("enumerator")
    record = client.get(f"/households/{hid}", headers=enumerator).json()
    assert record["review_state"] == "collected"
    patched = client.patch(
        f"/households/{hid}",
        json={"review_state": "verified"},
        headers={**enumerator, "If-Match": f'"{record["version"]}"'},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["review_state"] == "verified"


def test_planner_moves_one_block_with_its_households(
    client: TestClient, connection: Connection, token_for: Headers, kisima: Kisima
) -> None:
    planner = token_for("planner", "amina")
    answer = client.post(
        f"/settlements/{kisima.settlement}/review",
        json={"from": "collected", "to": "read_out", "block": "KS-01"},
        headers=planner,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["structures"] == 8 and body["matched_structures"] == 8
    assert body["households"] == 10
    block1, block2 = kisima.blocks["KS-01"], kisima.blocks["KS-02"]
    assert _states(connection, "structures", block1) == {"read_out"}
    assert _states(connection, "structures", block2) == {"collected"}
    moved_households = [h for s in block1 for h in kisima.households.get(s, [])]
    assert _states(connection, "households", moved_households) == {"read_out"}
    # audited per row, by the planner, with a new version
    rows = connection.execute(
        text(
            "SELECT count(*) FROM feature_history WHERE collection = 'structures' "
            "AND feature_id = ANY(:ids) AND changed_by = 'amina' AND version = 2 "
            "AND changes -> 'review_state' ->> 'to' = 'read_out'"
        ),
        {"ids": block1},
    ).scalar_one()
    assert rows == 8
    # again: nothing is collected in that block any more
    again = client.post(
        f"/settlements/{kisima.settlement}/review",
        json={"from": "collected", "to": "read_out", "block": "KS-01"},
        headers=planner,
    ).json()
    assert again["structures"] == 0 and again["households"] == 0


def test_move_by_ids_and_disputed_needs_a_note(
    client: TestClient, connection: Connection, token_for: Headers, kisima: Kisima
) -> None:
    planner = token_for("planner")
    url = f"/settlements/{kisima.settlement}/review"
    chosen = kisima.blocks["KS-02"][:2]
    no_note = client.post(url, json={"to": "disputed", "structure_ids": chosen}, headers=planner)
    assert no_note.status_code == 422 and "note" in no_note.json()["detail"]
    ok = client.post(
        url,
        json={"to": "disputed", "structure_ids": chosen, "note": "numbers swapped"},
        headers=planner,
    )
    assert ok.json()["structures"] == 2
    notes = (
        connection.execute(
            text("SELECT DISTINCT review_note FROM structures WHERE id = ANY(:ids)"),
            {"ids": chosen},
        )
        .scalars()
        .all()
    )
    assert notes == ["numbers swapped"]
    outside = client.post(
        url, json={"to": "verified", "structure_ids": [chosen[0], 2**40]}, headers=planner
    )
    assert outside.status_code == 422
    assert str(2**40) in outside.json()["detail"]
    assert _states(connection, "structures", [chosen[0]]) == {"disputed"}  # nothing half-done


@pytest.mark.parametrize(
    ("body", "word"),
    [
        ({"to": "approved"}, "to"),
        ({"to": "verified", "from": "done"}, "from"),
        ({"to": "verified", "blok": "KS-01"}, "blok"),
        ({}, "to"),
    ],
)
def test_bad_moves_are_422_naming_the_field(
    client: TestClient, token_for: Headers, kisima: Kisima, body: dict[str, object], word: str
) -> None:
    answer = client.post(
        f"/settlements/{kisima.settlement}/review", json=body, headers=token_for("planner")
    )
    assert answer.status_code == 422, answer.text
    assert word in answer.text


@pytest.mark.parametrize(("role", "status"), [(None, 401), ("mapper", 403), ("enumerator", 403)])
def test_moves_need_a_planner(
    client: TestClient, token_for: Headers, kisima: Kisima, role: str | None, status: int
) -> None:
    headers = token_for(role) if role else {}
    answer = client.post(
        f"/settlements/{kisima.settlement}/review", json={"to": "verified"}, headers=headers
    )
    assert answer.status_code == status


def test_move_in_unknown_settlement_is_404(client: TestClient, token_for: Headers) -> None:
    answer = client.post(
        "/settlements/999999/review", json={"to": "verified"}, headers=token_for("planner")
    )
    assert answer.status_code == 404


def _verify_block(client: TestClient, token_for: Headers, kisima: Kisima, block: str) -> None:
    answer = client.post(
        f"/settlements/{kisima.settlement}/review",
        json={"to": "verified", "block": block},
        headers=token_for("planner"),
    )
    assert answer.status_code == 200, answer.text


def test_verified_summary_counts_only_verified_rows(
    client: TestClient, connection: Connection, token_for: Headers, kisima: Kisima
) -> None:
    _verify_block(client, token_for, kisima, "KS-01")
    # one verified household of block 1 goes back to disputed
    first = kisima.households[kisima.blocks["KS-01"][0]][0]
    connection.execute(
        text("UPDATE households SET review_state = 'disputed' WHERE id = :id"), {"id": first}
    )
    planner = token_for("planner")
    url = f"/settlements/{kisima.settlement}/summary"
    everything = client.get(url, headers=planner).json()
    verified = client.get(url, params={"verified": "true"}, headers=planner).json()
    assert everything["structures"] == 16 and everything["households"] == 20
    assert verified["verified_only"] is True
    assert verified["structures"] == 8
    assert verified["households"] == 9
    assert verified["people"] == 5 * 8 - 3
    assert sum(v for v in verified["structures_by_use"].values()) == 8


def test_public_verified_only_setting(
    settings: Settings, db: BoundDatabase, token_for: Headers, kisima: Kisima
) -> None:
    strict = settings.model_copy(update={"public_verified_only": True})
    with TestClient(create_app(strict, database=db), raise_server_exceptions=False) as client:
        _verify_block(client, token_for, kisima, "KS-02")
        url = f"/settlements/{kisima.settlement}/summary"
        anonymous = client.get(url).json()
        signed_in = client.get(url, headers=token_for("viewer")).json()
    assert anonymous["verified_only"] is True and anonymous["structures"] == 8
    assert signed_in["verified_only"] is False and signed_in["structures"] == 16


def test_verified_analyses_count_only_verified_rows(
    client: TestClient, token_for: Headers, kisima: Kisima
) -> None:
    _verify_block(client, token_for, kisima, "KS-02")
    planner = token_for("planner")
    sid = kisima.settlement

    def both(
        method: str, url: str, params: dict[str, object], body: object = None
    ) -> tuple[Any, Any]:
        answers = []
        for verified in ("false", "true"):
            answer = client.request(
                method, url, params={**params, "verified": verified}, json=body, headers=planner
            )
            assert answer.status_code == 200, answer.text
            answers.append(answer.json())
        return answers[0], answers[1]

    grid_all, grid_verified = both(
        "GET", "/analysis/density", params={"settlement_id": sid, "cell_m": 1000}
    )
    total = lambda fc, key: sum(f["properties"][key] for f in fc["features"])  # noqa: E731
    assert (total(grid_all, "structures"), total(grid_verified, "structures")) == (16, 8)
    assert (total(grid_all, "households"), total(grid_verified, "households")) == (20, 10)
    access_all, access_verified = both(
        "GET",
        "/analysis/access",
        params={"settlement_id": sid, "facility_type": "school", "max_distance_m": 100},
    )
    assert (access_all["structures_total"], access_verified["structures_total"]) == (16, 8)
    assert (access_all["households_total"], access_verified["households_total"]) == (20, 10)
    zone = {
        "type": "Polygon",
        "coordinates": [
            [
                [262_000, 9_858_000],
                [262_200, 9_858_000],
                [262_200, 9_858_120],
                [262_000, 9_858_120],
                [262_000, 9_858_000],
            ]
        ],
    }
    impact_all, impact_verified = both(
        "POST",
        "/analysis/impact",
        params={"crs": "EPSG:32737"},
        body={
            "geometry": zone,
        },
    )
    assert (impact_all["structures"], impact_verified["structures"]) == (16, 8)
    assert (impact_all["people"], impact_verified["people"]) == (80, 40)
    # each answer says which it counted, as a summary and a profile do
    for every, verified_only in ((grid_all, grid_verified), (access_all, access_verified)):
        assert (every["verified_only"], verified_only["verified_only"]) == (False, True)
    assert (impact_all["verified_only"], impact_verified["verified_only"]) == (False, True)
