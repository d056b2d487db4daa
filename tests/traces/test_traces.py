"""``/traces`` over HTTP: the sample corpus, limits, dedupe and retries, visibility, downloads."""

from __future__ import annotations

import csv
import gzip
import io
import json
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine, text

from app.main import create_app
from geo.core.auth import Principal, create_token
from geo.core.settings import Settings
from geo.core.uploads import BodySpool
from geo.traces.gpx import Unusual
from geo.traces.ingest import IngestResult, TraceLimits, ingest_trace
from geo.traces.reads import trace_geojson_chunks
from tests.support.db import BoundDatabase, insert_settlement
from tests.support.samples import SAMPLES

GPX_DIR = SAMPLES / "gpx"  # ../shared/samples/gpx: every MANIFEST.tsv row is tested below
MANIFEST = list(csv.DictReader((GPX_DIR / "MANIFEST.tsv").open(), delimiter="\t"))
GPX = {"Content-Type": "application/gpx+xml"}
Auth = Callable[..., dict[str, str]]


def gpx_track(points: list[tuple[float, float, str | None]]) -> bytes:
    """A GPX 1.1 file with one track segment."""
    rows = "".join(
        f'<trkpt lat="{lat}" lon="{lon}">' + (f"<time>{t}</time>" if t else "") + "</trkpt>"
        for lat, lon, t in points
    )
    return (
        '<?xml version="1.0"?><gpx version="1.1" creator="test" '
        'xmlns="http://www.topografix.com/GPX/1/1">'
        f"<trk><trkseg>{rows}</trkseg></trk></gpx>"
    ).encode()


def walk(n: int = 5, start: int = 0) -> bytes:
    """A short walk in Kibera, one fix per second, ~1.1 m apart."""
    return gpx_track(
        [
            (-1.3130 + i * 1e-5, 36.7880, f"2024-05-01T08:00:{(start + i) % 60:02d}Z")
            for i in range(n)
        ]
    )


def assert_problem(response: httpx.Response, status: int) -> dict:  # type: ignore[type-arg]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys()
    return body


def upload(client: TestClient, headers: dict[str, str], body: bytes, **params: object):  # type: ignore[no-untyped-def]
    return client.post("/traces", content=body, headers={**GPX, **headers}, params=params)


# --------------------------------------------------------------------- corpus
def _expected(row: dict[str, str]) -> int:
    kind = row["kind"]
    if kind in ("valid", "compressed"):
        return 201
    if kind in ("malformed-xml", "truncated", "not-gpx"):
        return 400
    if kind == "no-points":
        return 422
    assert kind == "bad-coords"
    valid = sum(int(row[c]) for c in ("trkpts", "rtepts", "wpts"))
    return 201 if valid else 422


@pytest.mark.parametrize("row", MANIFEST, ids=[r["file"] for r in MANIFEST])
def test_sample_corpus(client: TestClient, token_for: Auth, row: dict[str, str]) -> None:
    raw = (GPX_DIR / row["file"]).read_bytes()
    headers = token_for("mapper")
    response = upload(client, headers, raw, name=row["file"])
    status = _expected(row)
    if status != 201:
        body = assert_problem(response, status)
        if status == 400 and row["kind"] != "not-gpx":
            assert "line" in body or "empty" in body["detail"], body
        if status == 422 and row["kind"] == "bad-coords":
            assert sum(g["count"] for g in body["dropped"]) >= 1
        count = client.get("/traces", headers=headers).json()["numberReturned"]
        assert count == 0  # nothing stored
        return
    assert response.status_code == 201, response.text
    trace = response.json()
    stats = trace["stats"]
    bad = {"lat missing", "lat not numeric", "lat not finite", "lat out of range"}
    bad |= {r.replace("lat", "lon") for r in bad}
    cleaned = sum(g["count"] for g in trace["dropped"] if g["kind"] == "trkpt")
    invalid = sum(g["count"] for g in trace["dropped"] if g["reason"] in bad)
    if row["kind"] == "bad-coords":
        assert invalid >= 1
        cleaned -= sum(
            g["count"] for g in trace["dropped"] if g["kind"] == "trkpt" and g["reason"] in bad
        )
    else:
        assert invalid == 0
        assert stats["points"] + sum(g["count"] for g in trace["dropped"]) == int(row["trkpts"])
    assert stats["points"] + cleaned == int(row["trkpts"])
    assert stats["segments"] == int(row["trksegs"])
    assert stats["tracks"] == int(row["tracks"])
    assert stats["routes"] == int(row["routes"])
    assert stats["waypoints"] == int(row["wpts"])
    assert stats["route_points"] == int(row["rtepts"])
    assert trace["visibility"] == "private"
    if "wrong_namespace" in row["file"]:
        assert any("namespace" in w for w in trace["warnings"])
    # same bytes again from the same user: 200 with the same trace
    again = upload(client, headers, raw)
    assert again.status_code == 200 and again.json()["id"] == trace["id"]
    # the original bytes come back byte for byte
    download = client.get(f"/traces/{trace['id']}/gpx", headers=headers)
    assert download.status_code == 200 and download.content == raw


# --------------------------------------------------------------- upload forms
def test_multipart_upload_and_downloads(client: TestClient, token_for: Auth) -> None:
    headers = token_for("mapper")
    raw = (GPX_DIR / "gpxstudio__with_tracks_and_segments.gpx").read_bytes()
    response = client.post(
        "/traces",
        files={"file": ("walk.gpx", raw, "application/gpx+xml")},
        params={"visibility": "public", "name": "lane walk"},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    trace = response.json()
    assert trace["name"] == "lane walk" and trace["visibility"] == "public"
    assert response.headers["location"].endswith(f"/traces/{trace['id']}")
    stats = trace["stats"]
    assert stats["points"] == 79 and stats["tracks"] == 2 and stats["segments"] == 4
    assert stats["length_m"] > 0 and stats["bbox"][0] < stats["bbox"][2]
    assert client.get(f"/traces/{trace['id']}/gpx").content == raw  # public: anonymous too
    geojson = client.get(f"/traces/{trace['id']}/geojson")
    assert geojson.headers["content-type"].startswith("application/geo+json")
    features = geojson.json()["features"]
    assert len(features) == 4
    assert {f["geometry"]["type"] for f in features} == {"LineString"}
    assert sum(f["properties"]["points"] for f in features) == 79
    # a multipart retry (new boundary, same file) is the same upload
    again = client.post("/traces", files={"file": ("x.gpx", raw)}, headers=headers)
    assert again.status_code == 200 and again.json()["id"] == trace["id"]


def test_multipart_without_file_field(client: TestClient, token_for: Auth) -> None:
    response = client.post(
        "/traces", files={"upload": ("a.gpx", walk())}, headers=token_for("mapper")
    )
    assert "file" in assert_problem(response, 400)["detail"]


@pytest.mark.parametrize("content_type", ["application/gzip", "application/octet-stream"])
def test_gzip_and_zip_uploads(client: TestClient, token_for: Auth, content_type: str) -> None:
    headers = {**token_for("mapper"), "Content-Type": content_type}
    response = client.post("/traces", content=gzip.compress(walk(7)), headers=headers)
    assert response.status_code == 201 and response.json()["stats"]["points"] == 7
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.gpx", walk(3))
        archive.writestr("sub/b.gpx", walk(4, start=10))
        archive.writestr("__MACOSX/._a.gpx", b"junk")
    response = client.post("/traces", content=buffer.getvalue(), headers=headers)
    assert response.status_code == 201, response.text
    stats = response.json()["stats"]
    assert stats["points"] == 7 and stats["tracks"] == 2 and stats["segments"] == 2
    assert response.json()["stats"]["content_type"] == "application/zip"


def test_wrong_content_type_is_415(client: TestClient, token_for: Auth) -> None:
    headers = {**token_for("mapper"), "Content-Type": "text/plain"}
    body = assert_problem(client.post("/traces", content=walk(), headers=headers), 415)
    assert "application/gpx+xml" in body["detail"]


def test_needs_mapper(client: TestClient, token_for: Auth) -> None:
    assert_problem(client.post("/traces", content=walk(), headers=GPX), 401)
    assert_problem(upload(client, token_for("viewer"), walk()), 403)


def test_bad_coordinates_dropped_with_reasons(client: TestClient, token_for: Auth) -> None:
    body = (
        b'<gpx version="1.1"><trk><trkseg>'
        b'<trkpt lat="-1.3" lon="36.8"/><trkpt lat="undefined" lon="36.8"/>'
        b'<trkpt lat="NaN" lon="36.8"/><trkpt lat="-1.3" lon="181"/><trkpt lon="36.8"/>'
        b'<trkpt lat="-1.30001" lon="36.8"/></trkseg></trk></gpx>'
    )
    response = upload(client, token_for("mapper"), body)
    assert response.status_code == 201, response.text
    trace = response.json()
    assert trace["stats"]["points"] == 2
    reasons = {g["reason"]: g["count"] for g in trace["dropped"]}
    assert reasons == {
        "lat not numeric": 1,
        "lat not finite": 1,
        "lon out of range": 1,
        "lat missing": 1,
    }
    first = next(g for g in trace["dropped"] if g["reason"] == "lat not numeric")["first"]
    assert first["value"] == "undefined" and first["index"] == 1
    # nothing at 0,0: the OSM bug this avoids
    bbox = trace["stats"]["bbox"]
    assert bbox[1] < -1 and bbox[0] > 36


def test_only_bad_points_is_422_and_nothing_stored(client: TestClient, token_for: Auth) -> None:
    headers = token_for("mapper")
    body = b'<gpx><wpt lat="undefined" lon="undefined"/><wpt lat="95" lon="1"/></gpx>'
    problem = assert_problem(upload(client, headers, body), 422)
    assert {g["reason"] for g in problem["dropped"]} == {"lat not numeric", "lat out of range"}
    assert client.get("/traces", headers=headers).json()["numberReturned"] == 0


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"", "empty"),
        (b"\xff\xd8\xff\xe0 JFIF", "not an XML document"),
        (b"<gpx><trk><trkseg><trkpt lat='1' lon='2'>", "Premature end"),
        (b"<kml><Placemark/></kml>", "<kml>"),
        (
            b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
            b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
            b"<gpx><wpt lat='1' lon='2'><name>&lol3;</name></wpt></gpx>",
            "DOCTYPE",
        ),
        (
            b'<?xml version="1.0"?><!DOCTYPE gpx [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b"<gpx><wpt lat='1' lon='2'><name>&x;</name></wpt></gpx>",
            "DOCTYPE",
        ),
        (b"<gpx>" + b"<a>" * 2000 + b"</a>" * 2000 + b"</gpx>", "depth"),
    ],
    ids=["empty", "jpeg", "truncated", "kml", "billion-laughs", "external-entity", "deep"],
)
def test_hostile_and_broken_files_are_400(
    client: TestClient, token_for: Auth, body: bytes, needle: str
) -> None:
    problem = assert_problem(upload(client, token_for("mapper"), body), 400)
    assert needle in problem["detail"]
    assert "/etc/passwd" not in problem["detail"] or "DOCTYPE" in problem["detail"]


@pytest.mark.timeout(120)  # a hang guard, not a timing assertion
def test_body_over_limit_is_413(client: TestClient, token_for: Auth) -> None:
    body = b'<gpx version="1.1">' + b" " * (60 * 1024 * 1024) + b"</gpx>"
    problem = assert_problem(upload(client, token_for("mapper"), body), 413)
    assert "50 MB" in problem["detail"]


@pytest.mark.timeout(120)  # a hang guard, not a timing assertion
def test_gzip_bomb_is_413(client: TestClient, token_for: Auth) -> None:
    # 1 GB of zeros compresses to about 1 MB; the 250 MB decompressed limit stops it.
    compressor = gzip.GzipFile
    buffer = io.BytesIO()
    with compressor(fileobj=buffer, mode="wb", compresslevel=9) as out:
        block = b"\0" * (16 * 1024 * 1024)
        for _ in range(64):
            out.write(block)
    headers = {**token_for("mapper"), "Content-Type": "application/gzip"}
    problem = assert_problem(
        client.post("/traces", content=buffer.getvalue(), headers=headers), 413
    )
    assert "decompressed" in problem["detail"]


def test_zip_bomb_is_413(client: TestClient, token_for: Auth) -> None:
    buffer = io.BytesIO()
    block = b"<gpx>" + b" " * (100 * 1024 * 1024) + b"</gpx>"
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(3):
            archive.writestr(f"{i}.gpx", block)
    del block
    headers = {**token_for("mapper"), "Content-Type": "application/zip"}
    problem = assert_problem(
        client.post("/traces", content=buffer.getvalue(), headers=headers), 413
    )
    assert "decompressed" in problem["detail"]


class TestPointLimit:
    @pytest.fixture
    def app_settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"max_trace_points": 10})

    def test_too_many_points_is_413(self, client: TestClient, token_for: Auth) -> None:
        problem = assert_problem(upload(client, token_for("mapper"), walk(11)), 413)
        assert "10" in problem["detail"]
        assert upload(client, token_for("mapper"), walk(10)).status_code == 201


def test_million_points(client: TestClient, token_for: Auth) -> None:
    """The OSM cap: exactly 1,000,000 points are stored (gzipped upload, compact points)."""
    parts = [b'<gpx version="1.1"><trk><trkseg>']
    for i in range(1_000_000):
        parts.append(b'<trkpt lat="-1.%06d" lon="36.%06d"/>' % (i % 900_000, i // 3))
    parts.append(b"</trkseg></trk></gpx>")
    raw = gzip.compress(b"".join(parts), compresslevel=1)
    del parts
    headers = {**token_for("mapper"), "Content-Type": "application/gzip"}
    response = client.post("/traces", content=raw, headers=headers, timeout=600)
    assert response.status_code == 201, response.text
    trace = response.json()
    assert trace["stats"]["points"] + sum(g["count"] for g in trace["dropped"]) == 1_000_000


# -------------------------------------------------------------- cleaning
def test_cleaning_duplicates_spikes_and_hdop(client: TestClient, token_for: Auth) -> None:
    points = [
        '<trkpt lat="-1.31300" lon="36.78800"><time>2024-05-01T08:00:00Z</time></trkpt>',
        '<trkpt lat="-1.31300" lon="36.78800"><time>2024-05-01T08:00:00Z</time></trkpt>',
        '<trkpt lat="-1.31301" lon="36.78800"><time>2024-05-01T08:00:01Z</time></trkpt>',
        # a spike 2 km away and straight back
        '<trkpt lat="-1.33301" lon="36.78800"><time>2024-05-01T08:00:02Z</time></trkpt>',
        '<trkpt lat="-1.31303" lon="36.78800"><time>2024-05-01T08:00:03Z</time></trkpt>',
        '<trkpt lat="-1.31304" lon="36.78800"><time>2024-05-01T08:00:04Z</time>'
        "<hdop>45</hdop></trkpt>",
        '<trkpt lat="-1.31305" lon="36.78800"><time>2024-05-01T08:00:05Z</time>'
        "<extensions><speed>1.2</speed></extensions></trkpt>",
    ]
    body = ('<gpx version="1.1"><trk><trkseg>' + "".join(points) + "</trkseg></trk></gpx>").encode()
    response = upload(client, token_for("mapper"), body)
    assert response.status_code == 201, response.text
    trace = response.json()
    reasons = {g["reason"]: g["count"] for g in trace["dropped"]}
    assert reasons == {
        "duplicate of the previous point": 1,
        "speed jump over 60 m/s": 1,
        "hdop over 20": 1,
    }
    assert trace["stats"]["points"] == 4
    assert trace["stats"]["duration_s"] == 5
    # ~5 points 1.1 m apart: a few metres, not the 4 km of the spike
    assert 3 < trace["stats"]["length_m"] < 8


# ------------------------------------------------------- dedupe and retries
def test_idempotency_key_and_content_hash(client: TestClient, token_for: Auth) -> None:
    headers = token_for("mapper", "wanjiku")
    first = upload(client, {**headers, "Idempotency-Key": "k-1"}, walk())
    assert first.status_code == 201
    replay = upload(client, {**headers, "Idempotency-Key": "k-1"}, walk())
    assert replay.status_code == 201 and replay.json()["id"] == first.json()["id"]
    assert replay.headers["idempotent-replayed"] == "true"
    same_bytes = upload(client, headers, walk())
    assert same_bytes.status_code == 200 and same_bytes.json()["id"] == first.json()["id"]
    problem = assert_problem(upload(client, {**headers, "Idempotency-Key": "k-1"}, walk(6)), 422)
    assert "k-1" in problem["detail"]
    # another user uploading the same bytes gets their own trace
    other = upload(client, token_for("mapper", "otieno"), walk())
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    listed = client.get("/traces", headers=headers).json()
    assert [t["id"] for t in listed["traces"] if t["owner"] == "wanjiku"] == [first.json()["id"]]


@pytest.fixture
def live_app(database_url: str, settings: Settings, engine: Engine) -> Iterator[str]:
    """A uvicorn server on the test database (real connections); cleans up what it stored."""
    app = create_app(settings.model_copy(update={"pool_size": 8}))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_concurrent_identical_uploads_make_one_trace(live_app: str, engine: Engine) -> None:
    owner = "concurrent-mapper"
    with engine.begin() as conn:
        token = create_token(conn, name=owner, role="mapper")
    body = walk(200)
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def send() -> None:
        response = httpx.post(
            f"{live_app}/traces",
            content=body,
            headers={**GPX, "Authorization": f"Bearer {token}"},
            timeout=60,
        )
        with lock:
            results.append(response)

    try:
        threads = [threading.Thread(target=send) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200] * 5 + [201], [r.text for r in results]
        assert len({r.json()["id"] for r in results}) == 1
        # the actor, named with the first statement (the key's claim here), or with the store
        keyed = httpx.post(
            f"{live_app}/traces",
            content=walk(7),
            headers={**GPX, "Authorization": f"Bearer {token}", "Idempotency-Key": "k"},
        )
        assert keyed.status_code == 201, keyed.text
        with engine.connect() as conn:
            stored = conn.execute(
                text("SELECT count(*) FROM traces WHERE owner = :o"), {"o": owner}
            ).scalar()
            who = conn.execute(
                text(
                    "SELECT t.created_by, h.changed_by FROM traces t JOIN feature_history h "
                    "ON h.collection = 'traces' AND h.feature_id = t.id WHERE t.owner = :o"
                ),
                {"o": owner},
            ).all()
        assert stored == 2
        assert [tuple(row) for row in who] == [(owner, owner)] * 2
    finally:
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL makazi.audit = 'off'"))
            ids = conn.execute(text("SELECT id FROM traces WHERE owner = :o"), {"o": owner})
            id_list = [row.id for row in ids]
            conn.execute(text("DELETE FROM traces WHERE owner = :o"), {"o": owner})
            conn.execute(
                text(
                    "DELETE FROM feature_history WHERE collection = 'traces' "
                    "AND feature_id = ANY(:ids)"
                ),
                {"ids": id_list},
            )
            conn.execute(text("DELETE FROM api_tokens WHERE name = :o"), {"o": owner})


# ---------------------------------------------------------------- visibility
def test_visibility_per_role(client: TestClient, token_for: Auth) -> None:
    owner = token_for("mapper", "amani")
    ids = {}
    for i, visibility in enumerate(("private", "community", "public")):
        response = upload(client, owner, walk(4, start=i * 10), visibility=visibility)
        assert response.status_code == 201
        ids[visibility] = response.json()["id"]
    viewer = token_for("viewer", "neighbour")
    other_mapper = token_for("mapper", "someone-else")
    admin = token_for("admin", "boss")

    def visible(headers: dict[str, str]) -> set[str]:
        seen = set()
        for visibility, trace_id in ids.items():
            status = client.get(f"/traces/{trace_id}", headers=headers).status_code
            assert status in (200, 404)
            if status == 200:
                seen.add(visibility)
                assert client.get(f"/traces/{trace_id}/gpx", headers=headers).status_code == 200
            else:
                assert client.get(f"/traces/{trace_id}/gpx", headers=headers).status_code == 404
        listed = {t["visibility"] for t in client.get("/traces", headers=headers).json()["traces"]}
        assert listed == seen
        return seen

    assert visible({}) == {"public"}
    assert visible(viewer) == {"community", "public"}
    assert visible(other_mapper) == {"community", "public"}
    assert visible(owner) == {"private", "community", "public"}
    assert visible(admin) == {"private", "community", "public"}


def test_owner_changes_visibility_with_if_match(client: TestClient, token_for: Auth) -> None:
    owner = token_for("mapper", "halima")
    trace = upload(client, owner, walk()).json()
    url = f"/traces/{trace['id']}"
    assert client.get(url).status_code == 404
    assert_problem(client.patch(url, json={"visibility": "public"}, headers=owner), 428)
    etag = client.get(url, headers=owner).headers["etag"]
    stale = client.patch(url, json={"visibility": "public"}, headers={**owner, "If-Match": '"99"'})
    assert_problem(stale, 412)
    other = token_for("mapper", "not-halima")
    assert_problem(
        client.patch(url, json={"visibility": "public"}, headers={**other, "If-Match": etag}), 404
    )
    changed = client.patch(
        url,
        json={"visibility": "public", "name": "Mathare lanes"},
        headers={**owner, "If-Match": etag},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["visibility"] == "public" and changed.json()["name"] == "Mathare lanes"
    assert changed.headers["etag"] != etag
    assert client.get(url).status_code == 200  # now anyone
    assert_problem(
        client.patch(url, json={"visibility": "secret"}, headers={**owner, "If-Match": "*"}), 422
    )
    # a community member who may see it still may not change it
    assert_problem(client.patch(url, json={"name": "x"}, headers={**other, "If-Match": "*"}), 403)


def test_delete_owner_or_admin(client: TestClient, token_for: Auth) -> None:
    owner = token_for("mapper", "baraka")
    first = upload(client, owner, walk(), visibility="community").json()
    second = upload(client, owner, walk(6), visibility="community").json()
    other = token_for("mapper", "not-baraka")
    assert_problem(client.delete(f"/traces/{first['id']}", headers=other), 403)
    assert client.delete(f"/traces/{first['id']}", headers=owner).status_code == 204
    assert client.get(f"/traces/{first['id']}", headers=owner).status_code == 404
    assert client.delete(f"/traces/{second['id']}", headers=token_for("admin")).status_code == 204
    # after a delete the same bytes make a new trace
    again = upload(client, owner, walk())
    assert again.status_code == 201 and again.json()["id"] != first["id"]


def test_settlement_id_must_exist(client: TestClient, token_for: Auth) -> None:
    problem = assert_problem(upload(client, token_for("mapper"), walk(), settlement_id=999999), 422)
    assert "settlement_id" in problem["detail"]


def live_and_deleted_settlements(conn: Connection, prefix: str = "") -> tuple[int, int]:
    """A live settlement around Kibera (where :func:`walk` goes) and a deleted one far
    from it, named with ``prefix``: their ids."""
    kibera = insert_settlement(
        conn,
        f"{prefix}Kibera",
        "MULTIPOLYGON(((36.78 -1.32,36.80 -1.32,36.80 -1.30,36.78 -1.30,36.78 -1.32)))",
    )
    gone = insert_settlement(
        conn, f"{prefix}gone", "MULTIPOLYGON(((36 -1,36.01 -1,36.01 -0.99,36 -1)))"
    )
    conn.execute(text("UPDATE settlements SET deleted_at = now() WHERE id = :i"), {"i": gone})
    return kibera, gone


def test_settlement_named_live_or_deleted(
    client: TestClient, token_for: Auth, connection: Connection
) -> None:
    """The small upload's store goes with its look-ups and is declined when they would
    answer otherwise: a live settlement is kept, a deleted one is a 422 with nothing
    stored, a walk far away is stored with its warning, and its bytes again answer 200."""
    kibera, gone = live_and_deleted_settlements(connection)
    headers = token_for("mapper", "akinyi")
    kept = upload(client, headers, walk(), settlement_id=kibera)
    assert kept.status_code == 201, kept.text
    assert kept.json()["settlement_id"] == kibera and kept.json()["warnings"] == []
    problem = assert_problem(upload(client, headers, walk(7), settlement_id=gone), 422)
    assert f"settlement_id {gone} does not exist" in problem["detail"]
    count = "SELECT count(*) FROM traces WHERE owner = 'akinyi'"
    assert connection.execute(text(count)).scalar_one() == 1
    far = gpx_track([(-4.04 + i * 1e-5, 39.66, None) for i in range(5)])
    stored = upload(client, headers, far)
    assert stored.status_code == 201, stored.text
    assert any("km from the nearest settlement (Kibera)" in w for w in stored.json()["warnings"])
    again = upload(client, headers, far)
    assert again.status_code == 200 and again.json() == stored.json()
    assert connection.execute(text(count)).scalar_one() == 2


def test_samples_dir_exists() -> None:
    assert Path(GPX_DIR / "MANIFEST.tsv").exists() and len(MANIFEST) == 60


# ------------------------------------------------------------------------- CLI
def test_cli_upload_direct_and_via_server(
    live_app: str,
    engine: Engine,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from app.cli import main

    files = []
    for i in range(3):
        path = tmp_path / f"walk{i}.gpx"
        path.write_bytes(walk(5 + i))
        files.append(str(path))
    broken = tmp_path / "broken.gpx"
    broken.write_bytes(b"<gpx><trk>")
    owner = "cli-mapper"
    monkeypatch.setenv("MAKAZI_DATABASE_URL", database_url)
    monkeypatch.delenv("MAKAZI_TOKEN", raising=False)
    try:
        assert main(["trace", "upload", *files, "--owner", owner, "--visibility", "public"]) == 0
        assert "3 stored, 0 already there, 0 failed; 18 points" in capsys.readouterr().out
        # again, through the server with a token: the same bytes are already there
        with engine.begin() as conn:
            token = create_token(conn, name=owner, role="mapper")
        code = main(["trace", "upload", *files, str(broken), "--url", live_app, "--token", token])
        captured = capsys.readouterr()
        assert code == 1
        assert "0 stored, 3 already there, 1 failed" in captured.out
        assert "broken.gpx" in captured.err and "Premature end" in captured.err
        # new files through the server, twice: the re-run stores nothing and says so
        fresh = []
        for i in range(2):
            path = tmp_path / f"fresh{i}.gpx"
            path.write_bytes(walk(9, start=30 + i))
            fresh.append(str(path))
        assert main(["trace", "upload", *fresh, "--url", live_app, "--token", token]) == 0
        assert "2 stored, 0 already there, 0 failed" in capsys.readouterr().out
        assert main(["trace", "upload", *fresh, "--url", live_app, "--token", token]) == 0
        assert "0 stored, 2 already there, 0 failed" in capsys.readouterr().out
    finally:
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL makazi.audit = 'off'"))
            ids = [
                r.id
                for r in conn.execute(text("SELECT id FROM traces WHERE owner = :o"), {"o": owner})
            ]
            conn.execute(text("DELETE FROM traces WHERE owner = :o"), {"o": owner})
            conn.execute(
                text(
                    "DELETE FROM feature_history WHERE collection = 'traces' "
                    "AND feature_id = ANY(:i)"
                ),
                {"i": ids},
            )
            conn.execute(text("DELETE FROM idempotency_keys WHERE principal = :o"), {"o": owner})
            conn.execute(text("DELETE FROM api_tokens WHERE name = :o"), {"o": owner})


# ------------------------------------------------------- direct and staged ingest
MIXED_GPX = b"""<?xml version="1.0"?>
<gpx version="1.1" creator="test" xmlns="http://www.topografix.com/GPX/1/1">
<wpt lat="-1.3125" lon="36.7885"><name>Water point</name><sym>Drinking Water</sym></wpt>
<wpt lat="undefined" lon="36.7886"><name>Broken</name></wpt>
<rte><rtept lat="-1.3120" lon="36.7880"/><rtept lat="-1.3121" lon="36.7881"/>
<rtept lat="-1.3122" lon="36.7882"/></rte>
<trk><trkseg>
<trkpt lat="-1.3130" lon="36.7880"><ele>1700</ele><time>2024-05-01T08:00:00Z</time>
<hdop>3</hdop></trkpt>
<trkpt lat="-1.3131" lon="36.7880"><time>2024-05-01T08:00:01.5+03:00</time></trkpt>
<trkpt lat="-1.3131" lon="36.7880"><time>2024-05-01T08:00:01.5+03:00</time></trkpt>
<trkpt lat="-1.3132" lon="36.7880"><time>2024-05-01T08:00:02Z</time><hdop>99</hdop></trkpt>
<trkpt lat="-1.3133" lon="36.7881"><time>2024-05-01T08:00:03Z</time></trkpt>
</trkseg><trkseg/><trkseg><trkpt lat="-1.3140" lon="36.7890"/></trkseg></trk>
<trk><trkseg><trkpt lat="-1.3150" lon="36.7900"/><trkpt lat="-1.3151" lon="36.7901"/>
</trkseg></trk>
</gpx>"""


def _stored(conn: Connection, result: IngestResult, user: Principal) -> dict[str, object]:
    """Everything an ingest answered and stored, without ids, owners and times."""
    summary = json.loads(result.body)
    for key in ("id", "owner", "created_at", "updated_at"):
        summary.pop(key)
    geojson = json.loads(b"".join(trace_geojson_chunks(conn, trace_id=result.trace_id, user=user)))
    points = conn.execute(
        text(
            "SELECT kind, seq, track, segment, ST_AsEWKT(geom), ele, time, name, "
            "extensions::text "
            "FROM trace_points WHERE trace_id = :i ORDER BY kind, seq"
        ),
        {"i": result.trace_id},
    ).all()
    segments = conn.execute(
        text(
            "SELECT kind, track, segment, points, ST_AsEWKT(geom) FROM trace_segments "
            "WHERE trace_id = :i ORDER BY kind, track, segment"
        ),
        {"i": result.trace_id},
    ).all()
    file = conn.execute(
        text("SELECT content_type, size_bytes, content FROM trace_files WHERE trace_id = :i"),
        {"i": result.trace_id},
    ).one()
    geojson["trace"].pop("id")
    return {
        "summary": summary,
        "geojson": geojson,
        "points": [tuple(p) for p in points],
        "segments": [tuple(s) for s in segments],
        "file": (file.content_type, file.size_bytes, bytes(file.content)),
    }


def _ingest_stored(
    db: BoundDatabase, owner: str, raw: bytes, limits: TraceLimits
) -> dict[str, object]:
    """Ingest ``raw`` as ``owner`` (a new trace): what was answered and stored."""
    spool = BodySpool(limit=1 << 24)
    spool.write(raw)
    with db.begin(owner) as conn:
        result = ingest_trace(
            conn,
            owner=owner,
            body=spool.finish(),
            name="walk",
            visibility="private",
            settlement_id=None,
            limits=limits,
        )
        assert result.created
        return _stored(conn, result, Principal(owner, "mapper", None))


@pytest.mark.parametrize("odd", [False, True], ids=["fast-read", "read-again"])
@pytest.mark.parametrize("max_rows", [0, 3], ids=["staged-from-start", "spilled-midway"])
def test_direct_and_staged_ingest_store_the_same(
    db: BoundDatabase, max_rows: int, odd: bool
) -> None:
    """A small upload is stored from memory; past the row limit through the staging
    table (from the start, or spilling the rows read so far): the same answer and rows.

    ``odd``: a point out of place at the end (ignored) sends the fast read back to the
    exact one after every row was taken: the rows taken so far are forgotten."""
    gpx = MIXED_GPX.replace(b"</gpx>", b'<trk><trkpt lat="0" lon="0"/></trk></gpx>')
    raw = gzip.compress(gpx if odd else MIXED_GPX)
    direct = _ingest_stored(db, "direct-mapper", raw, TraceLimits())
    staged = _ingest_stored(db, "staged-mapper", raw, TraceLimits(direct_max_rows=max_rows))
    assert direct == staged
    stats = direct["summary"]["stats"]  # type: ignore[index]
    assert (stats["points"], stats["segments"], stats["route_points"], stats["waypoints"]) == (
        6,
        4,
        3,
        1,
    )
    assert len(direct["segments"]) == 5  # type: ignore[arg-type]
    assert direct["file"] == ("application/gzip", len(raw), raw)


@pytest.mark.parametrize(
    ("max_rows", "max_bytes"),
    [(0, 1 << 22), (500, 1 << 22), (20_000, 1 << 22), (20_000, 0), (20_000, -1)],
    ids=["staged", "spilled", "direct", "straight", "straight-declined-late"],
)
def test_columnar_ingest_stores_what_the_reader_stores(
    db: BoundDatabase, max_rows: int, max_bytes: int
) -> None:
    """The columnar read (binary blocks into the staging table, rows in memory, or for a
    large upload straight into ``trace_points``) and the reader's reads store the same
    trace: answer, points, segments, lines, GeoJSON.  Declined after points went in
    (a comment before the end): they are taken back and the reader's read stores it."""
    from tests.traces.test_fast_read import _plain_walk, stored

    raw = _plain_walk(1_500, seed=7)
    if max_bytes < 0:
        raw, max_bytes = raw.replace(b"</trk></gpx>", b"<!-- late --></trk></gpx>"), 0
        with pytest.raises(Unusual):
            stored(raw, fast=False, columns=True)
    else:
        stored(raw, fast=False, columns=True)  # read in columns, not declined
    columnar, reader = (
        _ingest_stored(
            db,
            f"{label}-mapper",
            raw,
            TraceLimits(
                direct_max_rows=max_rows,
                direct_max_bytes=max_bytes,
                columns=columns,
                max_speed_mps=20.0,
            ),
        )
        for label, columns in (("columns", True), ("reader", False))
    )
    assert columnar == reader
    stats = reader["summary"]["stats"]  # type: ignore[index]
    assert stats["tracks"] == 2 and stats["segments"] == 4 and stats["points"] > 1_300
    assert any(point[5] is None for point in reader["points"])  # type: ignore[attr-defined]
    assert '{"hdop": 8.0}' in [point[8] for point in reader["points"]]  # type: ignore[attr-defined]
