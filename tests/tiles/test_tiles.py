"""Vector tiles and TileJSON: decoded tiles checked against SQL, caching, validators."""

from __future__ import annotations

import gzip
import math
import random
import shutil
import subprocess
import threading
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import mapbox_vector_tile
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, text

from geo.core.settings import Settings
from geo.demo.generator import DemoData, generate
from geo.demo.loader import load
from geo.tiles.cache import Tile, TileCache, make_tile
from geo.tiles.render import PRIVATE_FIELDS

TILED = ("settlements", "structures", "facilities", "traces")
PERSONAL = {"head_name", "phone", "members", "tenure", "rent_kes", "years_in_settlement"}


@lru_cache(maxsize=1)
def _demo() -> DemoData:
    return generate(600, seed=11)


@pytest.fixture
def demo(connection: Connection) -> DemoData:
    """600 demo structures (with households and facilities) in the test transaction."""
    data = _demo()
    load(connection, data)
    return data


def tile_of(lon: float, lat: float, z: int) -> tuple[int, int, int]:
    """The XYZ tile holding a point."""
    n = 1 << z
    x = int((lon + 180.0) / 360.0 * n)
    rad = math.radians(lat)
    y = int((1.0 - math.asinh(math.tan(rad)) / math.pi) / 2.0 * n)
    return z, x, y


def densest_tile(connection: Connection, z: int) -> tuple[int, int, int]:
    """The tile at zoom ``z`` that holds the most structure centroids."""
    x, y = connection.execute(
        text(
            "SELECT floor((ST_X(c) + 180) / 360 * 2 ^ :z)::int AS x, "
            "floor((1 - asinh(tan(radians(ST_Y(c)))) / pi()) / 2 * 2 ^ :z)::int AS y "
            "FROM (SELECT ST_Centroid(geom) c FROM structures WHERE deleted_at IS NULL) s "
            "GROUP BY 1, 2 ORDER BY count(*) DESC, 1, 2 LIMIT 1"
        ),
        {"z": z},
    ).one()
    return z, x, y


def fetch(client: TestClient, z: int, x: int, y: int, **headers: str) -> Any:
    return client.get(f"/tiles/{z}/{x}/{y}.mvt", headers=headers)


def decode(content: bytes) -> dict[str, Any]:
    return mapbox_vector_tile.decode(content) if content else {}


def sql_ids(connection: Connection, table: str, z: int, x: int, y: int, extra: str = "") -> set:
    """Ids of live rows whose geometry touches the tile (with the tile's 1/64 buffer)."""
    rows = connection.execute(
        text(
            f"SELECT id FROM {table} WHERE deleted_at IS NULL {extra} AND ST_Intersects("
            "ST_Transform(geom, 3857), ST_TileEnvelope(:z, :x, :y, margin => 1.0/64))"
        ),
        {"z": z, "x": x, "y": y},
    )
    return {row.id for row in rows}


def test_dense_tile_layers_and_features_match_sql(
    client: TestClient, connection: Connection, demo: DemoData
) -> None:
    z, x, y = densest_tile(connection, 17)
    response = fetch(client, z, x, y)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.mapbox-vector-tile"
    layers = decode(response.content)
    assert set(layers) <= set(TILED)
    assert {"settlements", "structures"} <= set(layers)
    for name in ("settlements", "structures", "facilities"):
        got = {f["id"] for f in layers.get(name, {}).get("features", [])}
        assert got == sql_ids(connection, name, z, x, y), name
    structures = layers["structures"]["features"]
    assert len(structures) > 20
    assert layers["structures"]["extent"] == 4096


def test_structure_attributes_are_those_of_the_row(
    client: TestClient, connection: Connection, demo: DemoData
) -> None:
    z, x, y = densest_tile(connection, 17)
    features = decode(fetch(client, z, x, y).content)["structures"]["features"]
    by_id = {f["id"]: f["properties"] for f in features}
    rows = connection.execute(
        text(
            "SELECT id, version, settlement_id, structure_number, use, storeys, households, "
            "wall_material, roof_material, review_state FROM structures WHERE id = ANY(:ids)"
        ),
        {"ids": list(by_id)},
    ).mappings()
    checked = 0
    for row in rows:
        props = by_id[row["id"]]
        expected = {k: v for k, v in row.items() if v is not None}
        assert props == expected
        checked += 1
    assert checked == len(by_id)
    assert any(p["households"] > 0 for p in by_id.values())


def test_settlement_and_facility_attributes(
    client: TestClient, connection: Connection, demo: DemoData
) -> None:
    z, x, y = densest_tile(connection, 13)
    layers = decode(fetch(client, z, x, y).content)
    assert "structures" not in layers  # structures start at zoom 14
    settlement = layers["settlements"]["features"][0]
    row = connection.execute(
        text("SELECT name, status, version, county, ward FROM settlements WHERE id = :i"),
        {"i": settlement["id"]},
    ).one()
    assert settlement["properties"] == {
        "id": settlement["id"],
        "version": row.version,
        "name": row.name,
        "status": row.status,
        "county": row.county,
        "ward": row.ward,
    }
    facilities = layers["facilities"]["features"]
    assert facilities
    kinds = {f["properties"]["type"] for f in facilities}
    assert kinds <= {"water_point", "toilet_block", "school", "clinic", "drainage", "road"}
    assert all(set(f["properties"]) >= {"id", "version", "type"} for f in facilities)


def test_zoom_14_sends_a_light_structure_layer(
    client: TestClient, connection: Connection, demo: DemoData
) -> None:
    z, x, y = densest_tile(connection, 14)
    layer = decode(fetch(client, z, x, y).content)["structures"]
    assert layer["extent"] == 512
    assert {key for f in layer["features"] for key in f["properties"]} == {"id", "use"}


def test_no_personal_field_in_any_tile(
    client: TestClient, connection: Connection, demo: DemoData
) -> None:
    trace_id = _insert_trace(connection, "public", owner="Wanjiru Kimani")
    people = connection.execute(text("SELECT head_name, phone FROM households")).all()
    secrets = {value for row in people for value in row if value} | {"Wanjiru Kimani"}
    assert len(secrets) > 100
    seen_keys: set[str] = set()
    checked = 0
    for z in range(10, 19):
        z, x, y = densest_tile(connection, z)
        content = fetch(client, z, x, y, **{"Accept-Encoding": "identity"}).content
        for secret in secrets:
            assert secret.encode() not in content
        for layer in decode(content).values():
            for feature in layer["features"]:
                seen_keys |= set(feature["properties"])
                checked += 1
    assert checked > 100
    assert not seen_keys & (PERSONAL | PRIVATE_FIELDS)
    assert trace_id  # the public trace was drawn: see test_only_public_live_traces


def _insert_trace(connection: Connection, visibility: str, owner: str = "mapper-1") -> int:
    lon, lat = connection.execute(
        text(
            "SELECT ST_X(c), ST_Y(c) FROM (SELECT ST_PointOnSurface(geom) c FROM settlements "
            "ORDER BY id LIMIT 1) s"
        )
    ).one()
    return int(
        connection.execute(
            text(
                "INSERT INTO traces (name, owner, visibility, content_sha256, points, length_m, "
                "geom) VALUES (:name, :owner, :vis, md5(random()::text), 3, 120.5, "
                "ST_Multi(ST_MakeLine(ARRAY[ST_Point(:lon, :lat, 4326), "
                "ST_Point(:lon + 0.0005, :lat, 4326), ST_Point(:lon + 0.0005, :lat + 0.0005, "
                "4326)]))) RETURNING id"
            ),
            {
                "name": f"{visibility} walk",
                "owner": owner,
                "vis": visibility,
                "lon": lon,
                "lat": lat,
            },
        ).scalar_one()
    )


def test_only_public_live_traces(
    client: TestClient, connection: Connection, demo: DemoData
) -> None:
    public = _insert_trace(connection, "public")
    private = _insert_trace(connection, "private", owner="mapper-2")
    community = _insert_trace(connection, "community", owner="mapper-3")
    deleted = _insert_trace(connection, "public", owner="mapper-4")
    connection.execute(text("UPDATE traces SET deleted_at = now() WHERE id = :i"), {"i": deleted})
    lon, lat = connection.execute(
        text(
            "SELECT ST_X(ST_StartPoint(geom)), ST_Y(ST_StartPoint(geom)) FROM "
            "(SELECT (ST_Dump(geom)).geom FROM traces WHERE id = :i) d"
        ),
        {"i": public},
    ).one()
    z, x, y = tile_of(lon + 0.00025, lat + 0.0001, 16)
    layers = decode(fetch(client, z, x, y).content)
    traces = {f["id"]: f["properties"] for f in layers["traces"]["features"]}
    assert set(traces) == sql_ids(connection, "traces", z, x, y, "AND visibility = 'public'")
    assert traces[public]["name"] == "public walk"
    assert traces[public]["length_m"] == pytest.approx(120.5)
    assert not any("owner" in props for props in traces.values())
    assert {private, community, deleted}.isdisjoint(traces)


def test_etag_cache_control_and_304(
    client: TestClient, connection: Connection, demo: DemoData
) -> None:
    z, x, y = densest_tile(connection, 16)
    first = fetch(client, z, x, y)
    assert first.status_code == 200
    etag = first.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert first.headers["content-encoding"] == "gzip"
    assert "max-age=" in first.headers["cache-control"]
    assert first.headers["cache-control"].startswith("public")
    again = fetch(client, z, x, y, **{"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    # The identity coding is another representation: its own strong ETag, same tile.
    plain = fetch(client, z, x, y, **{"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert plain.headers["etag"] != etag
    assert decode(plain.content) == decode(first.content)
    assert fetch(client, z, x, y, **{"If-None-Match": '"other"'}).status_code == 200


def test_cache_serves_repeats_and_an_edit_invalidates_it(
    client: TestClient, connection: Connection, demo: DemoData
) -> None:
    z, x, y = densest_tile(connection, 17)
    first = fetch(client, z, x, y)
    cache: TileCache = client.app.state.tile_cache  # type: ignore[attr-defined]
    misses = cache.misses
    second = fetch(client, z, x, y)
    assert cache.misses == misses and cache.hits >= 1
    assert second.headers["etag"] == first.headers["etag"]
    target = decode(first.content)["structures"]["features"][0]
    # Counters are bumped at commit; this transaction is rolled back instead,
    # so make the deferred trigger fire at the end of each statement.
    connection.execute(text("SET CONSTRAINTS tile_changes_bump IMMEDIATE"))
    connection.execute(
        text("UPDATE structures SET structure_number = 'EDITED-1', use = 'clinic' WHERE id = :i"),
        {"i": target["id"]},
    )
    third = fetch(client, z, x, y)
    assert third.headers["etag"] != first.headers["etag"]
    edited = {f["id"]: f["properties"] for f in decode(third.content)["structures"]["features"]}
    assert edited[target["id"]]["structure_number"] == "EDITED-1"
    assert edited[target["id"]]["use"] == "clinic"
    assert edited[target["id"]]["version"] == target["properties"]["version"] + 1
    # A delete takes the feature out of the tile.
    connection.execute(
        text("UPDATE structures SET deleted_at = now() WHERE id = :i"), {"i": target["id"]}
    )
    fourth = decode(fetch(client, z, x, y).content)["structures"]["features"]
    assert target["id"] not in {f["id"] for f in fourth}


def test_counters_bump_once_per_statement_batch_and_per_table(
    connection: Connection, demo: DemoData
) -> None:
    def counters() -> dict[str, int]:
        rows = connection.execute(text("SELECT collection, counter FROM tile_changes"))
        return dict(rows.all())

    connection.execute(text("SET CONSTRAINTS tile_changes_bump IMMEDIATE"))
    before = counters()
    connection.execute(
        text(
            "UPDATE structures SET storeys = 2 WHERE id IN "
            "(SELECT id FROM structures ORDER BY id LIMIT 50)"
        )
    )
    after = counters()
    assert after["structures"] == before["structures"] + 1
    assert after["settlements"] == before["settlements"]
    assert after["facilities"] == before["facilities"]
    # a household changes a structure's count, which tiles show
    sid = connection.execute(text("SELECT min(id) FROM structures")).scalar_one()
    connection.execute(
        text("INSERT INTO households (structure_id, members) VALUES (:s, 3)"), {"s": sid}
    )
    assert counters()["structures"] == before["structures"] + 2
    assert connection.execute(text("SELECT count(*) FROM tile_changes_pending")).scalar() == 0


def test_counter_bumps_at_commit(engine: Any) -> None:
    """Deferred to commit: one bump per table per transaction, none on rollback."""
    square = "MULTIPOLYGON(((10 10,10.001 10,10.001 10.001,10 10.001,10 10)))"

    def counter(conn: Connection) -> int:
        return int(
            conn.execute(
                text("SELECT counter FROM tile_changes WHERE collection = 'settlements'")
            ).scalar_one()
        )

    with engine.connect() as conn:
        start = counter(conn)
        conn.rollback()
    with engine.begin() as conn:
        for i in range(3):
            conn.execute(
                text("INSERT INTO settlements (name, geom) VALUES (:n, ST_GeomFromText(:w, 4326))"),
                {"n": f"tile-counter-{i}", "w": square},
            )
        assert counter(conn) == start  # not yet: bumped at commit
    with engine.connect() as conn:
        assert counter(conn) == start + 1
        conn.execute(text("DELETE FROM settlements WHERE name LIKE 'tile-counter-%'"))
        conn.rollback()
        assert counter(conn) == start + 1
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM settlements WHERE name LIKE 'tile-counter-%'"))
    with engine.connect() as conn:
        assert counter(conn) == start + 2
        conn.rollback()


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/tiles/21/0/0.mvt", "z must be between 0 and 20"),
        ("/tiles/3/8/0.mvt", "x must be between 0 and 7"),
        ("/tiles/3/0/8.mvt", "y must be between 0 and 7"),
        ("/tiles/-1/0/0.mvt", "z must be a non-negative integer"),
        ("/tiles/abc/0/0.mvt", "z must be a non-negative integer"),
        ("/tiles/2/1.5/0.mvt", "x must be a non-negative integer"),
        ("/tiles/99999999999999/0/0.mvt", "z must be"),
    ],
)
def test_out_of_range_is_a_400_problem(client: TestClient, path: str, needle: str) -> None:
    response = client.get(path)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert needle in response.json()["detail"]


def test_empty_area_is_204_with_validators(client: TestClient, demo: DemoData) -> None:
    z, x, y = tile_of(-30.0, 0.0, 12)  # mid-Atlantic
    response = fetch(client, z, x, y)
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["etag"]
    assert fetch(client, z, x, y, **{"If-None-Match": response.headers["etag"]}).status_code == 304


def test_tilejson(client: TestClient, connection: Connection, demo: DemoData) -> None:
    response = client.get("/tiles/tilejson.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["tilejson"] == "3.0.0"
    assert doc["tiles"] == ["http://testserver/tiles/{z}/{x}/{y}.mvt"]
    assert doc["minzoom"] == 0 and doc["maxzoom"] == 20
    layers = {layer["id"]: layer for layer in doc["vector_layers"]}
    assert set(layers) == set(TILED)
    assert layers["structures"]["minzoom"] == 14
    assert {"structure_number", "use", "households", "storeys"} <= set(
        layers["structures"]["fields"]
    )
    assert not set().union(*(layer["fields"] for layer in layers.values())) & (
        PERSONAL | PRIVATE_FIELDS
    )
    west, south, east, north = connection.execute(
        text(
            "SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM (SELECT ST_Extent(geom) e "
            "FROM settlements) x"
        )
    ).one()
    assert doc["bounds"] == pytest.approx([west, south, east, north], abs=1e-5)
    lon, lat, _zoom = doc["center"]
    assert west < lon < east and south < lat < north
    # every tile URL the document names is served
    z, x, y = tile_of(lon, lat, 12)
    url = doc["tiles"][0].format(z=z, x=x, y=y).removeprefix("http://testserver")
    assert client.get(url).status_code == 200


@pytest.fixture
def private_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"public_read": False})


def test_tiles_need_a_token_when_public_read_is_off(
    private_settings: Settings,
    db: Any,
    connection: Connection,
    token_for: Callable[..., dict[str, str]],
    demo: DemoData,
) -> None:
    from app.main import create_app

    with TestClient(create_app(private_settings, database=db)) as client:
        z, x, y = densest_tile(connection, 15)
        assert fetch(client, z, x, y).status_code == 401
        response = fetch(client, z, x, y, **token_for("viewer"))
        assert response.status_code == 200
        assert response.headers["cache-control"].startswith("private")


def test_tile_cache_is_bounded_and_least_recently_used() -> None:
    # incompressible payloads of one length: every entry costs the same
    tiles = {i: make_tile(random.Random(i).randbytes(4000)) for i in range(40)}
    assert len({len(tile.gzipped) for tile in tiles.values()}) == 1
    size = len(tiles[0].gzipped) + 200
    cache = TileCache(max_bytes=size * 10)
    for i in range(10):
        cache.put((i,), tiles[i])
    assert len(cache) == 10
    assert cache.get((0,)) is not None  # 0 is now the most recently used
    cache.put((10,), tiles[10])
    assert cache.get((1,)) is None  # evicted first
    assert cache.get((0,)) is not None
    for i in range(11, 40):
        cache.put((i,), tiles[i])
    assert cache.size_bytes <= cache.max_bytes
    assert len(cache) == 10
    # a tile bigger than an eighth of the cache is never kept
    big = make_tile(bytes(range(256)) * 4000)
    small = TileCache(max_bytes=len(big.gzipped) * 4)
    small.put(("big",), big)
    assert small.get(("big",)) is None
    assert TileCache(0).get(("x",)) is None
    assert gzip.decompress(tiles[3].gzipped) == tiles[3].raw()


@pytest.mark.skipif(shutil.which("ogrinfo") is None, reason="ogrinfo (Debian gdal-bin) missing")
def test_gdal_reads_the_tile(
    client: TestClient, connection: Connection, demo: DemoData, tmp_path: Path
) -> None:
    """An independent MVT reader (GDAL) finds the same layers and feature counts."""
    z, x, y = densest_tile(connection, 17)
    content = fetch(client, z, x, y, **{"Accept-Encoding": "identity"}).content
    layers = decode(content)
    path = tmp_path / str(z) / str(x) / f"{y}.pbf"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    out = subprocess.run(
        ["ogrinfo", "-ro", "-so", "-al", f"MVT:{path}"], capture_output=True, text=True, check=True
    ).stdout
    for name in layers:
        assert f"Layer name: {name}" in out
    counts = [
        int(line.split(":")[1]) for line in out.splitlines() if line.startswith("Feature Count")
    ]
    assert sorted(counts) == sorted(len(layer["features"]) for layer in layers.values())


def test_concurrent_misses_build_a_tile_once() -> None:
    cache = TileCache(max_bytes=1_000_000)
    started = threading.Event()
    release = threading.Event()
    calls: list[int] = []

    def build() -> Tile:
        calls.append(1)
        started.set()
        release.wait(10)
        return make_tile(b"tile bytes")

    results: list[Tile] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_build(("k",), build)))
        for _ in range(6)
    ]
    threads[0].start()
    assert started.wait(10)
    for thread in threads[1:]:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 1
    assert len(results) == 6 and all(r.raw() == b"tile bytes" for r in results)

    # a failing build lets the next caller try again
    def broken() -> Tile:
        raise RuntimeError("database went away")

    with pytest.raises(RuntimeError):
        cache.get_or_build(("other",), broken)
    assert cache.get_or_build(("other",), lambda: make_tile(b"ok")).raw() == b"ok"


def test_only_public_trace_changes_move_the_traces_counter(
    connection: Connection, demo: DemoData
) -> None:
    def counter() -> int:
        return int(
            connection.execute(
                text("SELECT counter FROM tile_changes WHERE collection = 'traces'")
            ).scalar_one()
        )

    connection.execute(text("SET CONSTRAINTS tile_changes_bump IMMEDIATE"))
    start = counter()
    private = _insert_trace(connection, "private")
    _insert_trace(connection, "community", owner="mapper-9")
    assert counter() == start  # not drawn: tiles stay cached
    connection.execute(
        text("UPDATE traces SET visibility = 'public' WHERE id = :i"), {"i": private}
    )
    assert counter() == start + 1
    connection.execute(
        text("UPDATE traces SET visibility = 'private' WHERE id = :i"), {"i": private}
    )
    assert counter() == start + 2  # leaving the map is a change too
    connection.execute(text("DELETE FROM traces WHERE id = :i"), {"i": private})
    assert counter() == start + 2
    public = _insert_trace(connection, "public", owner="mapper-8")
    assert counter() == start + 3
    connection.execute(text("DELETE FROM traces WHERE id = :i"), {"i": public})
    assert counter() == start + 4


def test_change_feed_invalidates_after_a_committed_edit(engine: Any, settings: Settings) -> None:
    """With a real database the app learns counter moves by LISTEN, not by asking per tile."""
    import time

    from app.main import create_app
    from geo.core.db import Database

    with engine.begin() as conn:
        sid = conn.execute(
            text(
                "INSERT INTO settlements (name, geom) VALUES ('Feed test', ST_GeomFromText("
                "'MULTIPOLYGON(((36.60 -1.20,36.61 -1.20,36.61 -1.19,36.60 -1.19,36.60 -1.20)))',"
                " 4326)) RETURNING id"
            )
        ).scalar_one()
    z, x, y = tile_of(36.605, -1.195, 14)

    def wait(predicate: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 15
        while not predicate():
            assert time.monotonic() < deadline, "the change feed did not catch up"
            time.sleep(0.05)

    try:
        app = create_app(settings, database=Database(engine))
        with TestClient(app) as client:
            feed = app.state.change_feed
            wait(lambda: feed.counters() is not None)
            before = feed.counters()["settlements"]
            first = fetch(client, z, x, y)
            names = [
                f["properties"]["name"] for f in decode(first.content)["settlements"]["features"]
            ]
            assert "Feed test" in names
            with engine.begin() as conn:
                conn.execute(
                    text("UPDATE settlements SET name = 'Feed test renamed' WHERE id = :i"),
                    {"i": sid},
                )
            wait(lambda: feed.counters()["settlements"] > before)
            second = fetch(client, z, x, y)
            assert second.headers["etag"] != first.headers["etag"]
            renamed = [
                f["properties"]["name"] for f in decode(second.content)["settlements"]["features"]
            ]
            assert "Feed test renamed" in renamed
            feed.stop()  # without the feed, tiles still come, reading counters per tile
            assert fetch(client, z, x, y).status_code == 200
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM settlements WHERE id = :i"), {"i": sid})
            conn.execute(
                text(
                    "DELETE FROM feature_history WHERE collection = 'settlements' "
                    "AND feature_id = :i"
                ),
                {"i": sid},
            )
