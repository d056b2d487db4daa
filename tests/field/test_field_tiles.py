"""A settlement's offline map: one PMTiles archive of its vector tiles, zooms 14..18."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import httpx
import mapbox_vector_tile
import pytest
from fastapi.testclient import TestClient
from pmtiles.reader import MemorySource, Reader, all_tiles
from pmtiles.tile import Compression, TileType
from sqlalchemy import Connection, text

from geo.core.errors import TooLarge
from geo.core.privacy import PERSONAL_HOUSEHOLD_FIELDS
from geo.field.tiles import TileArchiveStore, tiles_covering

Headers = Callable[..., dict[str, str]]
WEST, SOUTH, EAST, NORTH = 36.780, -1.312, 36.784, -1.308


@pytest.fixture
def settlement_id(connection: Connection) -> int:
    """A small settlement with three structures (one with a household) and a facility."""
    sid = int(
        connection.execute(
            text(
                "INSERT INTO settlements (name, geom) VALUES ('Tiles test', ST_Multi("
                "ST_MakeEnvelope(:w, :s, :e, :n, 4326))) RETURNING id"
            ),
            {"w": WEST, "s": SOUTH, "e": EAST, "n": NORTH},
        ).scalar_one()
    )
    for i, (lon, lat) in enumerate([(36.781, -1.309), (36.782, -1.310), (36.783, -1.311)]):
        connection.execute(
            text(
                "INSERT INTO structures (structure_number, use, geom) VALUES "
                "(:n, 'residential', ST_Buffer(ST_SetSRID(ST_MakePoint(:x, :y), 4326), "
                "0.00003, 'quad_segs=1'))"
            ),
            {"n": f"T-{i}", "x": lon, "y": lat},
        )
    connection.execute(
        text(
            "INSERT INTO households (structure_id, head_name, phone, members) "
            "SELECT id, 'Secret Head', '+254700999111', 3 FROM structures "
            "WHERE structure_number = 'T-0'"
        )
    )
    connection.execute(
        text(
            "INSERT INTO facilities (type, condition, name, geom) VALUES "
            "('water_point', 'working', 'Tap', ST_SetSRID(ST_MakePoint(36.7815, -1.3095), 4326))"
        )
    )
    return sid


def archive(client: TestClient, sid: int, **headers: str) -> httpx.Response:
    return client.get(f"/field/settlements/{sid}/tiles.pmtiles", headers=headers)


def test_the_archive_is_a_pmtiles_of_the_settlements_tiles(
    client: TestClient, settlement_id: int
) -> None:
    info = client.get(f"/field/settlements/{settlement_id}").json()
    response = archive(client, settlement_id)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.pmtiles"
    assert response.headers["etag"] == info["tiles_etag"]
    body = response.content
    assert len(body) == info["tiles_bytes"]
    assert info["total_bytes"] == info["bytes"] + info["tiles_bytes"]
    assert info["zooms"] == [14, 18]
    reader = Reader(MemorySource(body))
    header = reader.header()
    assert (header["min_zoom"], header["max_zoom"]) == (14, 18)
    assert header["tile_type"] == TileType.MVT
    assert header["tile_compression"] == Compression.GZIP
    bounds = [header[k] / 1e7 for k in ("min_lon_e7", "min_lat_e7", "max_lon_e7", "max_lat_e7")]
    assert bounds == pytest.approx([WEST, SOUTH, EAST, NORTH], abs=1e-6)
    assert info["tiles"] == header["addressed_tiles_count"] > 0
    metadata = reader.metadata()
    assert {layer["id"] for layer in metadata["vector_layers"]} >= {"structures", "settlements"}
    tiles = dict(all_tiles(reader.get_bytes))
    covering = set(tiles_covering((WEST, SOUTH, EAST, NORTH), 14, 18))
    assert set(tiles) <= covering and {z for z, _, _ in tiles} == {14, 15, 16, 17, 18}
    numbers: set[str] = set()
    for (z, _, _), data in tiles.items():
        layers = mapbox_vector_tile.decode(gzip.decompress(data))
        for feature in layers.get("structures", {}).get("features", []) if z == 18 else []:
            numbers.add(feature["properties"]["structure_number"])
    assert numbers == {"T-0", "T-1", "T-2"}
    # the tile at z16 holding a structure is the /tiles one, byte for byte
    z, x, y = next((z, x, y) for z, x, y in tiles if z == 16)
    served = client.get(f"/tiles/{z}/{x}/{y}.mvt", headers={"Accept-Encoding": "identity"})
    assert served.content == gzip.decompress(tiles[(z, x, y)])


def test_no_personal_field_reaches_the_archive(
    client: TestClient, settlement_id: int, token_for: Headers
) -> None:
    body = archive(client, settlement_id, **token_for("viewer")).content
    assert b"Secret Head" not in body and b"+254700999111" not in body
    reader = Reader(MemorySource(body))
    for _, data in all_tiles(reader.get_bytes):
        raw = gzip.decompress(data)
        assert b"Secret Head" not in raw and b"+254700999111" not in raw
        for layer in mapbox_vector_tile.decode(raw).values():
            for feature in layer["features"]:
                assert not PERSONAL_HOUSEHOLD_FIELDS & set(feature["properties"])


def test_etag_304_and_range_requests(client: TestClient, settlement_id: int) -> None:
    whole = archive(client, settlement_id)
    etag = whole.headers["etag"]
    assert archive(client, settlement_id, **{"If-None-Match": etag}).status_code == 304
    part = archive(client, settlement_id, Range="bytes=0-126")
    assert part.status_code == 206
    assert part.content == whole.content[:127]
    assert part.headers["content-range"] == f"bytes 0-126/{len(whole.content)}"
    assert part.content[:7] == b"PMTiles"
    tail = archive(client, settlement_id, Range="bytes=-10")
    assert tail.status_code == 206 and tail.content == whole.content[-10:]


def test_an_edit_in_the_settlement_makes_a_new_archive(
    client: TestClient, connection: Connection, settlement_id: int
) -> None:
    first = client.get(f"/field/settlements/{settlement_id}").json()
    again = client.get(f"/field/settlements/{settlement_id}").json()
    assert again["tiles_etag"] == first["tiles_etag"]
    connection.execute(text("SET CONSTRAINTS tile_changes_bump IMMEDIATE"))
    connection.execute(
        text(
            "UPDATE structures SET storeys = 4, version = version + 1, "
            "geom = ST_Translate(geom, 0.0005, 0) WHERE structure_number = 'T-1'"
        )
    )
    after = client.get(f"/field/settlements/{settlement_id}").json()
    assert after["tiles_etag"] != first["tiles_etag"]
    assert archive(client, settlement_id).headers["etag"] == after["tiles_etag"]
    stale = archive(client, settlement_id, **{"If-None-Match": first["tiles_etag"]})
    assert stale.status_code == 200
    # on disk: the current file and the one before (a download of it may be running)
    folder = client.app.state.field_tiles.folder  # type: ignore[attr-defined]
    kept = set(folder.glob(f"{settlement_id}-*.pmtiles"))
    assert len(kept) == 2
    connection.execute(text("UPDATE structures SET storeys = 5 WHERE structure_number = 'T-2'"))
    client.get(f"/field/settlements/{settlement_id}")
    now = set(folder.glob(f"{settlement_id}-*.pmtiles"))
    assert len(now) == 2 and len(now & kept) == 1  # the oldest one is gone


def test_an_unknown_or_too_large_settlement_is_refused(
    client: TestClient, connection: Connection, settlement_id: int, tmp_path: Path
) -> None:
    response = archive(client, 2**40)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    store = TileArchiveStore(tmp_path, max_tiles=3)
    with pytest.raises(TooLarge, match="MAKAZI_FIELD_TILES_MAX=3"):
        store.get(connection, settlement_id)
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left


def test_the_same_counters_over_other_data_never_match(
    connection: Connection, settlement_id: int, tmp_path: Path
) -> None:
    store = TileArchiveStore(tmp_path)
    first = store.get(connection, settlement_id)
    counters = connection.execute(text("SELECT sum(counter) FROM tile_changes")).scalar()
    # The counters move at commit, never inside this test's transaction: they stay the
    # same here, as they restart when a database is made afresh beside the same data_dir.
    connection.execute(
        text(
            "UPDATE structures SET version = version + 1, geom = ST_Translate(geom, 0.001, 0) "
            "WHERE structure_number = 'T-0'"
        )
    )
    assert connection.execute(text("SELECT sum(counter) FROM tile_changes")).scalar() == counters
    second = store.get(connection, settlement_id)
    assert second.path != first.path and second.etag != first.etag


def test_a_download_completes_while_the_archive_is_replaced_twice(
    client: TestClient, connection: Connection, settlement_id: int
) -> None:
    """The archive is replaced twice (its file deleted) between the response's headers
    and its body: the download still sends the bytes its ETag and length promised."""
    whole = archive(client, settlement_id)
    store = client.app.state.field_tiles  # type: ignore[attr-defined]
    first = next(store.folder.glob(f"{settlement_id}-*.pmtiles"))
    connection.execute(text("SET CONSTRAINTS tile_changes_bump IMMEDIATE"))
    messages: list[dict[str, Any]] = []

    def replace_twice() -> None:
        for storeys, number in ((6, "T-1"), (7, "T-2")):
            connection.execute(
                text(
                    "UPDATE structures SET storeys = :s, version = version + 1, "
                    "geom = ST_Translate(geom, 0.0002, 0) WHERE structure_number = :n"
                ),
                {"s": storeys, "n": number},
            )
            store.get(connection, settlement_id)

    requested: list[bool] = []

    async def receive() -> dict[str, Any]:
        if not requested:
            requested.append(True)
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.sleep_forever()  # the client stays until the body is sent
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)
        if message["type"] == "http.response.start":
            replace_twice()  # a slow client: the file goes away before the body is read

    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/field/settlements/{settlement_id}/tiles.pmtiles",
        "raw_path": f"/field/settlements/{settlement_id}/tiles.pmtiles".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
        "app": client.app,
    }

    async def route() -> None:
        # the router itself: the app's middleware (gzip) holds the start until the body's
        # first chunk, so only here does this send run where a slow client makes it wait
        async with AsyncExitStack() as stack:
            scope["fastapi_middleware_astack"] = stack
            await client.app.router(scope, receive, send)  # type: ignore[attr-defined]

    anyio.run(route)

    assert not first.exists()  # replaced twice: the file the download started with is gone
    start = next(m for m in messages if m["type"] == "http.response.start")
    assert start["status"] == 200
    assert dict(start["headers"])[b"etag"].decode() == whole.headers["etag"]
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    assert body == whole.content
    assert not list((store.folder / "downloads").glob("*"))  # the download's pin is gone
