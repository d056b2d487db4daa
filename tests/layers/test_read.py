"""OGC API - Features reads: collections, items, paging, bbox, CRS, CQL2, sortby."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from pyproj import Transformer
from sqlalchemy import Connection, text

from geo.core.settings import Settings
from geo.demo.generator import generate
from geo.demo.loader import load

CONFORMANCE_NEEDED = {
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/features-filter",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions",
    "http://www.opengis.net/spec/ogcapi-features-4/1.0/conf/create-replace-delete",
    "http://www.opengis.net/spec/ogcapi-features-4/1.0/conf/update",
}


@pytest.fixture
def demo(connection: Connection) -> dict[str, int]:
    """600 synthetic structures in 5 settlements, inside the test transaction."""
    return load(connection, generate(600, seed=3))


def items(client: TestClient, collection: str, **params: Any) -> dict[str, Any]:
    response = client.get(f"/collections/{collection}/items", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/geo+json")
    body: dict[str, Any] = response.json()
    assert body["type"] == "FeatureCollection"
    assert body["numberReturned"] == len(body["features"])
    return body


def sql_ids(
    connection: Connection,
    where: str,
    params: dict[str, Any] | None = None,
    table: str = "structures",
) -> set[int]:
    rows = connection.execute(
        text(f"SELECT id FROM {table} WHERE deleted_at IS NULL AND ({where})"), params or {}
    )
    return {row[0] for row in rows}


def all_ids(client: TestClient, collection: str, **params: Any) -> list[int]:
    """Follow next links to the end; return every id seen, in order."""
    seen: list[int] = []
    body = items(client, collection, **params)
    pages = 0
    while True:
        seen += [f["id"] for f in body["features"]]
        nxt = [link["href"] for link in body["links"] if link["rel"] == "next"]
        if not nxt:
            return seen
        pages += 1
        assert pages < 1000
        response = client.get(nxt[0])
        assert response.status_code == 200
        body = response.json()


def test_conformance_declares_what_qgis_needs(client: TestClient) -> None:
    classes = set(client.get("/conformance").json()["conformsTo"])
    assert classes >= CONFORMANCE_NEEDED


def test_collections(client: TestClient, demo: dict[str, int]) -> None:
    body = client.get("/collections").json()
    ids = [c["id"] for c in body["collections"]]
    assert ids == ["settlements", "structures", "facilities", "traces"]
    for collection in body["collections"]:
        assert collection["itemType"] == "feature"
        assert "http://www.opengis.net/def/crs/EPSG/0/32737" in collection["crs"]
        assert collection["storageCrs"].endswith("CRS84")
        rels = {link["rel"] for link in collection["links"]}
        assert {"self", "items"} <= rels
    structures = client.get("/collections/structures").json()
    minx, miny, maxx, maxy = structures["extent"]["spatial"]["bbox"][0]
    assert 36.6 < minx < maxx < 37.0 and -1.4 < miny < maxy < -1.2


def test_unknown_collection_is_404(client: TestClient) -> None:
    for path in ("/collections/nope", "/collections/nope/items", "/collections/households/items"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/problem+json")


def test_default_page_and_next_link(client: TestClient, demo: dict[str, int]) -> None:
    body = items(client, "structures")
    assert body["numberReturned"] == 100
    assert body["numberMatched"] == 600
    rels = {link["rel"]: link for link in body["links"]}
    assert rels["next"]["type"] == "application/geo+json"
    assert "collection" in rels and "self" in rels
    feature = body["features"][0]
    assert isinstance(feature["id"], int)
    assert feature["properties"]["version"] == 1
    assert "head_name" not in json.dumps(body)


def test_limit_is_clamped_not_refused(
    app_settings: Settings, db: Any, demo: dict[str, int]
) -> None:
    from app.main import create_app

    small = app_settings.model_copy(update={"items_max_limit": 7})
    with TestClient(create_app(small, database=db)) as client:
        body = items(client, "structures", limit=50000)
    assert body["numberReturned"] == 7


def test_paging_visits_every_feature_once(
    client: TestClient, connection: Connection, demo: dict[str, int]
) -> None:
    seen = all_ids(client, "structures", limit=97)
    assert len(seen) == len(set(seen)) == 600
    assert set(seen) == sql_ids(connection, "true")
    assert seen == sorted(seen)


def test_prev_link_returns_previous_page(client: TestClient, demo: dict[str, int]) -> None:
    first = items(client, "structures", limit=10)
    second = client.get(
        next(link["href"] for link in first["links"] if link["rel"] == "next")
    ).json()
    prev = next(link["href"] for link in second["links"] if link["rel"] == "prev")
    again = client.get(prev).json()
    assert [f["id"] for f in again["features"]] == [f["id"] for f in first["features"]]


def test_bbox_matches_sql(client: TestClient, connection: Connection, demo: dict[str, int]) -> None:
    box = connection.execute(
        text(
            "SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM "
            "(SELECT ST_Expand(ST_Centroid(geom), 0.002) e FROM settlements ORDER BY id LIMIT 1) x"
        )
    ).one()
    bbox = ",".join(str(v) for v in box)
    expected = sql_ids(
        connection,
        "ST_Intersects(geom, ST_MakeEnvelope(:a,:b,:c,:d,4326))",
        dict(zip("abcd", box, strict=True)),
    )
    assert expected
    assert set(all_ids(client, "structures", bbox=bbox, limit=1000)) == expected
    # the same box in UTM 37S through bbox-crs
    to_utm = Transformer.from_crs(4326, 32737, always_xy=True)
    x1, y1 = to_utm.transform(box[0], box[1])
    x2, y2 = to_utm.transform(box[2], box[3])
    utm = items(
        client,
        "structures",
        bbox=f"{x1},{y1},{x2},{y2}",
        limit=1000,
        **{"bbox-crs": "http://www.opengis.net/def/crs/EPSG/0/32737"},
    )
    got = {f["id"] for f in utm["features"]}
    assert len(got ^ expected) <= max(2, len(expected) // 100)  # box edges differ slightly


def test_crs_round_trip(client: TestClient, connection: Connection) -> None:
    connection.execute(
        text(
            "INSERT INTO facilities (id, type, name, geom) VALUES "
            "(9001, 'water_point', 'Tap A', ST_GeomFromText('POINT(36.7871234 -1.3130987)', 4326))"
        )
    )
    utm = "http://www.opengis.net/def/crs/EPSG/0/32737"
    response = client.get("/collections/facilities/items/9001", params={"crs": utm})
    assert response.headers["content-crs"] == f"<{utm}>"
    x, y = response.json()["geometry"]["coordinates"]
    assert set(response.json()["geometry"]) == {"type", "coordinates"}  # RFC 7946: no "crs"
    page = client.get("/collections/facilities/items", params={"crs": utm, "limit": 5}).json()
    assert all(set(f["geometry"]) == {"type", "coordinates"} for f in page["features"])
    ex, ey = Transformer.from_crs(4326, 32737, always_xy=True).transform(36.7871234, -1.3130987)
    assert abs(x - ex) < 0.01 and abs(y - ey) < 0.01
    latlon = client.get(
        "/collections/facilities/items/9001",
        params={"crs": "http://www.opengis.net/def/crs/EPSG/0/4326"},
    ).json()
    assert latlon["geometry"]["coordinates"] == [-1.3130987, 36.7871234]
    default = client.get("/collections/facilities/items/9001")
    assert default.json()["geometry"]["coordinates"] == [36.7871234, -1.3130987]
    assert default.headers["content-crs"].endswith("CRS84>")
    arc = client.get("/collections/facilities/items/9001", params={"crs": "EPSG:21037"}).json()
    ax, ay = Transformer.from_crs(4326, 21037, always_xy=True).transform(36.7871234, -1.3130987)
    assert abs(arc["geometry"]["coordinates"][0] - ax) < 0.05
    assert abs(arc["geometry"]["coordinates"][1] - ay) < 0.05
    assert (
        client.get("/collections/facilities/items", params={"crs": "EPSG:9999"}).status_code == 400
    )


def test_property_filters_match_sql(
    client: TestClient, connection: Connection, demo: dict[str, int]
) -> None:
    settlement = connection.execute(text("SELECT min(id) FROM settlements")).scalar()
    expected = sql_ids(connection, "use = 'residential' AND settlement_id = :s", {"s": settlement})
    got = all_ids(client, "structures", use="residential", settlement_id=settlement, limit=500)
    assert set(got) == expected and expected


CQL2_CASES = [
    ("use = 'business'", "use = 'business'"),
    ("use <> 'residential' AND storeys >= 2", "use <> 'residential' AND storeys >= 2"),
    ("use = 'school' OR use = 'clinic'", "use IN ('school', 'clinic')"),
    ("NOT (storeys = 1)", "NOT (storeys = 1)"),
    ("structure_number LIKE 'KB-01-%'", "structure_number LIKE 'KB-01-%'"),
    ("CASEI(structure_number) LIKE 'kb-01-00%'", "lower(structure_number) LIKE 'kb-01-00%'"),
    ("storeys BETWEEN 2 AND 3", "storeys BETWEEN 2 AND 3"),
    ("use IN ('toilet', 'water_point')", "use IN ('toilet', 'water_point')"),
    ("wall_material IS NULL", "wall_material IS NULL"),
    ("households > 1", "households > 1"),
    ("CASEI(use) = CASEI('RESIDENTIAL')", "use = 'residential'"),
]


@pytest.mark.parametrize(("cql", "where"), CQL2_CASES)
def test_cql2_text_matches_sql(
    client: TestClient, connection: Connection, demo: dict[str, int], cql: str, where: str
) -> None:
    expected = sql_ids(connection, where)
    got = all_ids(client, "structures", filter=cql, limit=1000)
    assert set(got) == expected


def test_cql2_spatial_text_and_json(
    client: TestClient, connection: Connection, demo: dict[str, int]
) -> None:
    boundary = connection.execute(
        text(
            "SELECT ST_AsText(ST_Buffer(ST_Centroid(geom), 0.001, 4)) FROM settlements "
            "ORDER BY id LIMIT 1"
        )
    ).scalar()
    expected = sql_ids(
        connection, "ST_Intersects(geom, ST_GeomFromText(:w, 4326))", {"w": boundary}
    )
    assert expected
    got = all_ids(client, "structures", filter=f"S_INTERSECTS(geometry, {boundary})", limit=1000)
    assert set(got) == expected
    within = sql_ids(connection, "ST_Within(geom, ST_GeomFromText(:w, 4326))", {"w": boundary})
    got_within = all_ids(client, "structures", filter=f"S_WITHIN(geometry, {boundary})", limit=1000)
    assert set(got_within) == within
    geojson = json.loads(
        connection.execute(
            text("SELECT ST_AsGeoJSON(ST_GeomFromText(:w, 4326))"), {"w": boundary}
        ).scalar()
    )
    tree = {
        "op": "and",
        "args": [
            {"op": "s_intersects", "args": [{"property": "geometry"}, geojson]},
            {"op": "=", "args": [{"property": "use"}, "residential"]},
        ],
    }
    expected_json = sql_ids(
        connection,
        "ST_Intersects(geom, ST_GeomFromText(:w, 4326)) AND use = 'residential'",
        {"w": boundary},
    )
    got_json = all_ids(
        client, "structures", filter=json.dumps(tree), **{"filter-lang": "cql2-json"}, limit=1000
    )
    assert set(got_json) == expected_json


def test_cql2_bbox_and_filter_crs(
    client: TestClient, connection: Connection, demo: dict[str, int]
) -> None:
    box = connection.execute(
        text(
            "SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM (SELECT "
            "ST_Expand(ST_Centroid(geom), 0.001) e FROM settlements ORDER BY id LIMIT 1) x"
        )
    ).one()
    expected = sql_ids(
        connection,
        "ST_Intersects(geom, ST_MakeEnvelope(:a,:b,:c,:d,4326))",
        dict(zip("abcd", box, strict=True)),
    )
    got = all_ids(
        client,
        "structures",
        filter=f"S_INTERSECTS(geometry, BBOX({box[0]},{box[1]},{box[2]},{box[3]}))",
        limit=1000,
    )
    assert set(got) == expected
    # EPSG:4326 as filter-crs means latitude first
    swapped = all_ids(
        client,
        "structures",
        filter=f"S_INTERSECTS(geometry, BBOX({box[1]},{box[0]},{box[3]},{box[2]}))",
        **{"filter-crs": "http://www.opengis.net/def/crs/EPSG/0/4326"},
        limit=1000,
    )
    assert set(swapped) == expected


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"filter": "use = "}, "1:7"),
        ({"filter": "head_name = 'Amina'"}, "head_name"),
        ({"filter": "storeys = 'two'"}, "number"),
        ({"filter": "S_FOO(geometry)"}, "S_FOO"),
        ({"filter": '{"op": ', "filter-lang": "cql2-json"}, "line 1"),
        ({"filter": "use = 'x'", "filter-lang": "ecql"}, "filter-lang"),
        ({"sortby": "head_name"}, "head_name"),
        ({"limit": "0"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"bbox": "1,2,3"}, "bbox"),
        ({"bbox": "36.8,-1.3,36.7,-1.2"}, "bbox"),
        ({"bbox": "36.7,-1.3,181,-1.2"}, "bbox longitude must lie within [-180, 180]"),
        ({"bbox": "36.7,-91,36.8,-1.2"}, "bbox latitude must lie within [-90, 90]"),
        (
            {"bbox": "-1e10,-1e10,1e10,1e10", "bbox-crs": "EPSG:21037"},
            "outside of projection domain",
        ),
        ({"bbox": "1e300,1e300,1e301,1e301", "bbox-crs": "EPSG:32737"}, "transform"),
        ({"datetime": "yesterday"}, "datetime"),
        ({"colour": "red"}, "colour"),
        ({"crs": "EPSG:4269"}, "crs"),
        ({"after": str(10**23)}, "after"),
        ({"offset": str(10**23)}, "offset"),
        ({"settlement_id": "1e30"}, "settlement_id"),
        ({"storeys": str(10**14)}, "not valid here"),
        ({"filter": f"storeys = {10**20}"}, "out of range"),
        ({"filter": "id = 1e300"}, "out of range"),
        ({"use": "residental"}, "use must be one of residential, business"),
        ({"use": "school,skool"}, "got 'skool'"),
        ({"filter": "use = 'residental'"}, "use must be one of residential"),
        ({"filter": "use IN ('school', 'skool')"}, "got 'skool'"),
    ],
)
def test_bad_parameters_are_400_naming_the_problem(
    client: TestClient, params: dict[str, str], needle: str
) -> None:
    response = client.get("/collections/structures/items", params=params)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert needle in response.json()["detail"]


def test_sortby_with_offset_paging(
    client: TestClient, connection: Connection, demo: dict[str, int]
) -> None:
    body = items(client, "structures", sortby="-storeys,structure_number", limit=50)
    storeys = [f["properties"]["storeys"] for f in body["features"]]
    assert storeys == sorted(storeys, reverse=True)
    seen = all_ids(client, "structures", sortby="-storeys", limit=150)
    assert len(seen) == len(set(seen)) == 600


def test_datetime_filter(client: TestClient, connection: Connection, demo: dict[str, int]) -> None:
    connection.execute(
        text(
            "UPDATE structures SET updated_at = '2020-05-01T10:00:00Z' "
            "WHERE id IN (SELECT id FROM structures ORDER BY id LIMIT 3)"
        )
    )
    body = items(client, "structures", datetime="2020-01-01T00:00:00Z/2020-12-31T00:00:00Z")
    assert body["numberReturned"] == 3
    body = items(client, "structures", datetime="../2021-01-01T00:00:00Z")
    assert body["numberReturned"] == 3


def test_queryables(client: TestClient) -> None:
    response = client.get("/collections/structures/queryables")
    assert response.headers["content-type"].startswith("application/schema+json")
    schema = response.json()
    assert schema["properties"]["use"]["enum"][0] == "residential"
    assert "geometry" in schema["properties"]
    assert "head_name" not in schema["properties"]


def test_openapi_describes_filter_lang(client: TestClient) -> None:
    spec = client.get("/api").json()
    params = spec["paths"]["/collections/{collection_id}/items"]["get"]["parameters"]
    lang = next(p for p in params if p.get("name") == "filter-lang")
    text_of = json.dumps(lang["schema"])
    assert "cql2-text" in text_of and "cql2-json" in text_of


def test_gzip_when_accepted(client: TestClient, demo: dict[str, int]) -> None:
    response = client.get(
        "/collections/structures/items?limit=200", headers={"Accept-Encoding": "gzip"}
    )
    assert response.headers.get("content-encoding") == "gzip"
    assert response.json()["numberReturned"] == 200  # httpx decodes it
    raw = client.get(
        "/collections/structures/items?limit=200", headers={"Accept-Encoding": "identity"}
    )
    assert "content-encoding" not in raw.headers
    # the same features either way, and compression is worth it on the wire
    assert [f["id"] for f in raw.json()["features"]] == [
        f["id"] for f in response.json()["features"]
    ]
    with client.stream(
        "GET", "/collections/structures/items?limit=200", headers={"Accept-Encoding": "gzip"}
    ) as wire:
        compressed = b"".join(wire.iter_raw())
    assert len(compressed) < len(raw.content) / 4


def test_item_etag_and_304(
    client: TestClient, connection: Connection, demo: dict[str, int]
) -> None:
    fid = connection.execute(text("SELECT min(id) FROM structures")).scalar()
    response = client.get(f"/collections/structures/items/{fid}")
    assert response.headers["etag"] == '"1"'
    feature = response.json()
    assert feature["id"] == fid
    assert {link["rel"] for link in feature["links"]} >= {"self", "collection"}
    again = client.get(f"/collections/structures/items/{fid}", headers={"If-None-Match": '"1"'})
    assert again.status_code == 304
    assert client.get("/collections/structures/items/999999999").status_code == 404


def test_public_read_off_needs_a_token(app_settings: Settings, db: Any, token_for: Any) -> None:
    from app.main import create_app

    closed = app_settings.model_copy(update={"public_read": False})
    with TestClient(create_app(closed, database=db), raise_server_exceptions=False) as client:
        assert client.get("/collections/structures/items").status_code == 401
        ok = client.get("/collections/structures/items", headers=token_for("viewer"))
        assert ok.status_code == 200


def test_traces_collection_shows_only_public(
    client: TestClient, connection: Connection, token_for: Any
) -> None:
    for visibility in ("private", "community", "public"):
        connection.execute(
            text(
                "INSERT INTO traces (name, owner, visibility, content_sha256, geom) VALUES "
                "(:v, 'someone', :v, :v, ST_GeomFromText('MULTILINESTRING((36.78 -1.31, 36.79 "
                "-1.31))', 4326))"
            ),
            {"v": visibility},
        )
    anonymous = items(client, "traces")
    assert [f["properties"]["name"] for f in anonymous["features"]] == ["public"]
    viewer = client.get("/collections/traces/items", headers=token_for("viewer")).json()
    assert sorted(f["properties"]["name"] for f in viewer["features"]) == ["community", "public"]
    assert "owner" not in json.dumps(anonymous)


def test_url_encoding_of_links(client: TestClient, demo: dict[str, int]) -> None:
    cql = "structure_number LIKE 'KB-%' AND storeys >= 1"
    body = items(client, "structures", filter=cql, limit=5)
    nxt = next(link["href"] for link in body["links"] if link["rel"] == "next")
    assert quote("'KB-%'", safe="") in nxt or "%27KB-%25%27" in nxt
    assert client.get(nxt).status_code == 200


def test_array_property_filter(
    client: TestClient, connection: Connection, demo: dict[str, int]
) -> None:
    expected = {
        row[0]
        for row in connection.execute(
            text("SELECT id FROM settlements WHERE 'Kibra' = ANY(alt_names)")
        )
    }
    got = {f["id"] for f in items(client, "settlements", alt_names="Kibra")["features"]}
    assert got == expected and expected


@pytest.mark.parametrize("feature_id", ["0", "-3", str(2**62 + 1)])
def test_an_id_out_of_range_is_404_like_any_absent_one(client: TestClient, feature_id: str) -> None:
    response = client.get(f"/collections/structures/items/{feature_id}")
    assert response.status_code == 404, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert feature_id in response.json()["detail"]
