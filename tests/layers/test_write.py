"""OGC API - Features Part 4 writes: create, replace, patch, delete, versions, history."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pyproj import Transformer
from sqlalchemy import Connection, Engine, text

from app.main import create_app
from geo.core.auth import create_token
from geo.core.db import Database
from geo.core.settings import Settings

Headers = Callable[..., dict[str, str]]
SQUARE = [[36.780, -1.310], [36.790, -1.310], [36.790, -1.300], [36.780, -1.300], [36.780, -1.310]]


def footprint(x: float = 36.785, y: float = -1.305, size: float = 0.00004) -> dict[str, Any]:
    ring = [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
    return {"type": "Polygon", "coordinates": [ring]}


def structure(number: str = "KB-01-0001", **props: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": footprint(),
        "properties": {"structure_number": number, "use": "residential", "storeys": 1, **props},
    }


@pytest.fixture
def settlement_id(connection: Connection) -> int:
    return int(
        connection.execute(
            text(
                "INSERT INTO settlements (name, geom) VALUES ('Kibera test', "
                "ST_GeomFromText('MULTIPOLYGON(((36.78 -1.31,36.79 -1.31,36.79 -1.30,36.78 -1.30,"
                "36.78 -1.31)))', 4326)) RETURNING id"
            )
        ).scalar_one()
    )


@pytest.fixture
def mapper(token_for: Headers) -> dict[str, str]:
    return token_for("mapper", "wanjiku")


def post(
    client: TestClient,
    body: Any,
    headers: dict[str, str],
    collection: str = "structures",
    **params: Any,
) -> Any:
    return client.post(
        f"/collections/{collection}/items",
        content=json.dumps(body),
        headers={**headers, "Content-Type": "application/geo+json"},
        params=params,
    )


def assert_problem(response: Any, status: int, needle: str = "") -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert needle in body["detail"], body
    return body


def test_create_returns_201_location_etag(
    client: TestClient, mapper: dict[str, str], settlement_id: int, connection: Connection
) -> None:
    response = post(client, structure(), mapper)
    assert response.status_code == 201, response.text
    assert response.headers["etag"] == '"1"'
    location = response.headers["location"]
    created = client.get(location)
    assert created.status_code == 200
    feature = created.json()
    assert feature["properties"]["settlement_id"] == settlement_id  # derived spatially
    assert feature["properties"]["households"] == 0
    row = connection.execute(
        text("SELECT created_by, version FROM structures WHERE id = :i"), {"i": feature["id"]}
    ).one()
    assert row.created_by == "wanjiku" and row.version == 1


def test_writes_need_a_mapper(client: TestClient, token_for: Headers) -> None:
    assert post(client, structure(), {}).status_code == 401
    assert post(client, structure(), token_for("viewer")).status_code == 403


@pytest.mark.parametrize(
    ("feature", "status", "needle"),
    [
        (
            {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [
                        [
                            [36.78, -1.31],
                            [36.79, -1.30],
                            [36.79, -1.31],
                            [36.78, -1.30],
                            [36.78, -1.31],
                        ]
                    ],
                },
                "properties": {},
            },
            422,
            "Self-intersection",
        ),
        (
            {
                "type": "Feature",
                "geometry": {"type": "LineString", "coordinates": [[36.78, -1.31], [36.79, -1.3]]},
                "properties": {},
            },
            422,
            "LINESTRING",
        ),
        (structure(colour="red"), 422, "colour"),
        (structure(use="palace"), 422, "use must be one of"),
        (structure(storeys="two"), 422, "storeys"),
        (structure(storeys=0), 422, "storeys"),
        ({"type": "Feature", "properties": {}}, 422, "geometry is required"),
        (
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[[1, 2]]]},
                "properties": {},
            },
            422,
            "geometry",
        ),
        (
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": ["a", "b"]},
                "properties": {},
            },
            422,
            "geometry",
        ),
        ([1, 2, 3], 422, "Feature"),
        (
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [36.7, -91]},
                "properties": {},
            },
            422,
            "latitude",
        ),
        (
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [1e300, -1.3]},
                "properties": {},
            },
            422,
            "longitude",
        ),
    ],
)
def test_bad_features_are_refused(
    client: TestClient,
    mapper: dict[str, str],
    feature: Any,
    status: int,
    needle: str,
    connection: Connection,
) -> None:
    before = connection.execute(text("SELECT count(*) FROM structures")).scalar()
    assert_problem(post(client, feature, mapper), status, needle)
    assert connection.execute(text("SELECT count(*) FROM structures")).scalar() == before


def test_bad_json_names_line_and_column(client: TestClient, mapper: dict[str, str]) -> None:
    response = client.post(
        "/collections/structures/items", content=b'{"type": "Feature",\n x}', headers=mapper
    )
    assert_problem(response, 400, "line 2 column 2")
    nan = client.post(
        "/collections/structures/items",
        content=b'{"type":"Feature","geometry":{"type":"Point","coordinates":'
        b'[NaN, 1]},"properties":{}}',
        headers=mapper,
    )
    assert_problem(nan, 400, "NaN")


def test_repair_true_fixes_a_bowtie(
    client: TestClient, mapper: dict[str, str], connection: Connection
) -> None:
    bowtie = {
        "type": "Feature",
        "properties": {"name": "Bowtie"},
        "geometry": {
            "type": "Polygon",
            "coordinates": [
                [[36.78, -1.31], [36.79, -1.30], [36.79, -1.31], [36.78, -1.30], [36.78, -1.31]]
            ],
        },
    }
    response = post(client, bowtie, mapper, collection="settlements", repair="true")
    assert response.status_code == 201, response.text
    fid = response.json()["id"]
    valid, kind = connection.execute(
        text("SELECT ST_IsValid(geom), GeometryType(geom) FROM settlements WHERE id = :i"),
        {"i": fid},
    ).one()
    assert valid and kind == "MULTIPOLYGON"


def test_feature_collection_is_all_or_nothing(
    client: TestClient, mapper: dict[str, str], connection: Connection, settlement_id: int
) -> None:
    good = structure("A-1")
    bad = structure("A-2", use="castle")
    response = post(client, {"type": "FeatureCollection", "features": [good, bad, good]}, mapper)
    body = assert_problem(response, 422, "nothing was written")
    assert [e["index"] for e in body["errors"]] == [1, 2]
    assert (
        connection.execute(
            text("SELECT count(*) FROM structures WHERE structure_number LIKE 'A-%'")
        ).scalar()
        == 0
    )
    ok = post(
        client,
        {"type": "FeatureCollection", "features": [structure("A-1"), structure("A-2")]},
        mapper,
    )
    assert ok.status_code == 201
    assert ok.json()["numberCreated"] == 2


def test_duplicate_structure_number_is_409(
    client: TestClient, mapper: dict[str, str], settlement_id: int
) -> None:
    first = post(client, structure("KB-07-0042"), mapper).json()["id"]
    body = assert_problem(post(client, structure("KB-07-0042"), mapper), 409, "KB-07-0042")
    assert body["conflicting_id"] == first


def test_idempotency_key(
    client: TestClient, mapper: dict[str, str], connection: Connection
) -> None:
    headers = {**mapper, "Idempotency-Key": "retry-123"}
    first = post(client, structure("R-1"), headers)
    again = post(client, structure("R-1"), headers)
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert (
        connection.execute(
            text("SELECT count(*) FROM structures WHERE structure_number = 'R-1'")
        ).scalar()
        == 1
    )
    other = post(client, structure("R-2"), headers)
    assert_problem(other, 422, "retry-123")


def test_put_patch_need_if_match(client: TestClient, mapper: dict[str, str]) -> None:
    fid = post(client, structure("P-1"), mapper).json()["id"]
    url = f"/collections/structures/items/{fid}"
    patch = {"properties": {"storeys": 2}}
    assert_problem(client.patch(url, json=patch, headers=mapper), 428, "If-Match")
    assert_problem(client.put(url, json=structure("P-1"), headers=mapper), 428, "If-Match")
    assert_problem(client.delete(url, headers=mapper), 428, "If-Match")
    stale = client.patch(url, json=patch, headers={**mapper, "If-Match": '"7"'})
    assert_problem(stale, 412, "version 1")
    assert stale.headers["etag"] == '"1"'
    ok = client.patch(url, json=patch, headers={**mapper, "If-Match": '"1"'})
    assert ok.status_code == 200 and ok.headers["etag"] == '"2"'
    assert ok.json()["properties"]["storeys"] == 2
    replaced = client.put(
        url, json=structure("P-1b", storeys=3), headers={**mapper, "If-Match": '"2"'}
    )
    assert replaced.status_code == 200
    props = replaced.json()["properties"]
    assert props["structure_number"] == "P-1b" and props["wall_material"] is None
    assert replaced.headers["etag"] == '"3"'


def test_a_weak_if_match_never_matches(client: TestClient, mapper: dict[str, str]) -> None:
    # If-Match compares strongly (RFC 9110 13.1.1): W/"1" is not version 1's "1"
    fid = post(client, structure("W-1"), mapper).json()["id"]
    url = f"/collections/structures/items/{fid}"
    weak = client.patch(
        url, json={"properties": {"storeys": 2}}, headers={**mapper, "If-Match": 'W/"1"'}
    )
    assert_problem(weak, 412, "version 1")
    assert client.get(url).json()["properties"]["version"] == 1


def test_patch_null_clears_and_geometry_moves(
    client: TestClient, mapper: dict[str, str], connection: Connection
) -> None:
    fid = post(client, structure("M-1", wall_material="mud"), mapper).json()["id"]
    url = f"/collections/structures/items/{fid}"
    moved = footprint(36.786, -1.306)
    response = client.patch(
        url,
        json={"properties": {"wall_material": None}, "geometry": moved},
        headers={**mapper, "If-Match": "1"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["properties"]["wall_material"] is None
    x = connection.execute(
        text("SELECT ST_XMin(geom) FROM structures WHERE id = :i"), {"i": fid}
    ).scalar()
    assert abs(x - 36.786) < 1e-9


def test_delete_is_soft_and_in_history(
    client: TestClient, mapper: dict[str, str], token_for: Headers, connection: Connection
) -> None:
    fid = post(client, structure("D-1"), mapper).json()["id"]
    url = f"/collections/structures/items/{fid}"
    client.patch(
        url, json={"properties": {"use": "business"}}, headers={**mapper, "If-Match": '"1"'}
    )
    assert client.delete(url, headers={**mapper, "If-Match": '"2"'}).status_code == 204
    assert client.get(url).status_code == 404
    assert connection.execute(
        text("SELECT deleted_at IS NOT NULL FROM structures WHERE id = :i"), {"i": fid}
    ).scalar()
    assert client.get(f"{url}/history").status_code == 401
    history = client.get(f"{url}/history", headers=token_for("viewer")).json()["versions"]
    assert [v["action"] for v in history] == ["create", "update", "delete"]
    assert [v["version"] for v in history] == [1, 2, 3]
    assert {v["changed_by"] for v in history} == {"wanjiku"}
    assert history[1]["changes"]["use"] == {"from": "residential", "to": "business"}
    again = client.delete(url, headers={**mapper, "If-Match": '"3"'})
    assert again.status_code == 404


def test_created_history_changes_are_what_was_stored_before(
    client: TestClient, mapper: dict[str, str], token_for: Headers, connection: Connection
) -> None:
    # a create row keeps the feature once, in its snapshot (migration 0024); the history
    # still answers the old stored value: every key but the unchanging ones, from null
    fid = post(client, structure("H-1", wall_material="mud"), mapper).json()["id"]
    stored = connection.execute(
        text(
            "SELECT h.changes IS NULL AS derived, makazi_diff(NULL, to_jsonb(s)) AS before "
            "FROM structures s JOIN feature_history h ON h.collection = 'structures' "
            "AND h.feature_id = s.id WHERE s.id = :i"
        ),
        {"i": fid},
    ).one()
    assert stored.derived
    url = f"/collections/structures/items/{fid}/history"
    answer = client.get(url, headers=token_for("viewer"))
    assert answer.status_code == 200, answer.text
    [created] = answer.json()["versions"]
    assert created["action"] == "create"
    assert json.dumps(created["changes"]) == json.dumps(stored.before)  # keys in order too
    assert created["changes"]["wall_material"] == {"from": None, "to": "mud"}
    assert created["changes"]["geom"]["to"]["type"] == "Polygon"
    assert "version" not in created["changes"] and "created_by" not in created["changes"]
    # a row written before 0024 keeps its stored changes, and they are what is answered
    connection.execute(
        text(
            "UPDATE feature_history SET changes = CAST(:c AS jsonb) "
            "WHERE collection = 'structures' AND feature_id = :i"
        ),
        {"i": fid, "c": json.dumps({"use": {"from": None, "to": "stored"}})},
    )
    [old] = client.get(url, headers=token_for("viewer")).json()["versions"]
    assert old["changes"] == {"use": {"from": None, "to": "stored"}}


def test_content_crs_utm(
    client: TestClient, mapper: dict[str, str], connection: Connection
) -> None:
    to_utm = Transformer.from_crs(4326, 32737, always_xy=True)
    x, y = to_utm.transform(36.7855, -1.3055)
    feature = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [x, y]},
        "properties": {"type": "water_point", "condition": "working"},
    }
    response = client.post(
        "/collections/facilities/items",
        json=feature,
        headers={**mapper, "Content-Crs": "<http://www.opengis.net/def/crs/EPSG/0/32737>"},
    )
    assert response.status_code == 201, response.text
    lon, lat = response.json()["geometry"]["coordinates"]
    assert abs(lon - 36.7855) < 1e-6 and abs(lat + 1.3055) < 1e-6


def test_traces_collection_is_read_only(client: TestClient, mapper: dict[str, str]) -> None:
    response = post(client, structure(), mapper, collection="traces")
    assert_problem(response, 405, "POST /traces")


def test_body_limit_is_413(app_settings: Settings, db: Any, mapper: dict[str, str]) -> None:
    small = app_settings.model_copy(update={"max_json_body_mb": 1})
    with TestClient(create_app(small, database=db), raise_server_exceptions=False) as client:
        big = json.dumps(structure(notes="x" * 2_000_000)).encode()
        response = client.post("/collections/structures/items", content=big, headers=mapper)
    assert_problem(response, 413, "MAKAZI_MAX_JSON_BODY_MB")


def test_vertex_limit_is_413(app_settings: Settings, db: Any, mapper: dict[str, str]) -> None:
    small = app_settings.model_copy(update={"max_feature_vertices": 10})
    ring = [[36.78 + i * 1e-5, -1.31] for i in range(20)] + [[36.78, -1.30], [36.78, -1.31]]
    feature = {
        "type": "Feature",
        "properties": {"name": "x"},
        "geometry": {"type": "Polygon", "coordinates": [ring]},
    }
    with TestClient(create_app(small, database=db), raise_server_exceptions=False) as client:
        response = post(client, feature, mapper, collection="settlements")
    assert_problem(response, 413, "vertices")


# ------------------------------------------------------------ real concurrency
@pytest.fixture
def committed(
    engine: Engine, settings: Settings
) -> Iterator[tuple[TestClient, dict[str, str], int]]:
    """An app on real pooled connections with one committed structure; cleaned up after."""
    with engine.begin() as conn:
        token = create_token(conn, name="racer", role="mapper")
        fid = conn.execute(
            text(
                "INSERT INTO structures (structure_number, geom) VALUES ('RACE-1', "
                "ST_GeomFromText('POINT(36.70 -1.20)', 4326)) RETURNING id"
            )
        ).scalar_one()
    app = create_app(settings, database=Database(engine))
    with TestClient(app) as client:
        yield client, {"Authorization": f"Bearer {token}"}, int(fid)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM structures WHERE id = :i"), {"i": fid})
        conn.execute(
            text("DELETE FROM feature_history WHERE feature_id = :i AND collection = 'structures'"),
            {"i": fid},
        )
        conn.execute(text("DELETE FROM api_tokens WHERE name = 'racer'"))


def test_concurrent_patches_one_wins(committed: tuple[TestClient, dict[str, str], int]) -> None:
    client, headers, fid = committed
    url = f"/collections/structures/items/{fid}"
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def edit(storeys: int) -> None:
        barrier.wait()
        response = client.patch(
            url, json={"properties": {"storeys": storeys}}, headers={**headers, "If-Match": '"1"'}
        )
        statuses.append(response.status_code)

    threads = [threading.Thread(target=edit, args=(n,)) for n in (2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 412]
    final = client.get(url)
    assert final.headers["etag"] == '"2"'


def test_page_etag_changes_after_a_committed_edit(
    committed: tuple[TestClient, dict[str, str], int],
) -> None:
    client, headers, fid = committed
    url = "/collections/structures/items?limit=5"
    first = client.get(url)
    tag = first.headers["etag"]
    assert tag.startswith('W/"')
    assert client.get(url, headers={"If-None-Match": tag}).status_code == 304
    edited = client.patch(
        f"/collections/structures/items/{fid}",
        json={"properties": {"storeys": 4}},
        headers={**headers, "If-Match": '"1"'},
    )
    assert edited.status_code == 200
    after = client.get(url, headers={"If-None-Match": tag})
    assert after.status_code == 200 and after.headers["etag"] != tag


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/collections/structures/items", "GET, POST, OPTIONS"),
        ("/collections/structures/items/1", "GET, PUT, PATCH, DELETE, OPTIONS"),
        ("/collections/traces/items", "GET, OPTIONS"),
        ("/collections/traces/items/1", "GET, OPTIONS"),
    ],
)
def test_options_names_the_methods(client: TestClient, path: str, allow: str) -> None:
    """What QGIS (3.32+) reads to offer editing of a layer."""
    response = client.options(path)
    assert response.status_code == 204
    assert response.headers["allow"] == allow
    assert client.options("/collections/roads/items").status_code == 404
