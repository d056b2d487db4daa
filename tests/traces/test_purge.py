"""Purging a trace: bytes, points, lines and history gone for good; only who purged it stays."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import Connection, text

from tests.support.live import LiveServer
from tests.traces.test_traces import upload, walk

Auth = Callable[..., dict[str, str]]


def rows(conn: Connection, sql: str, **params: object) -> int:
    return int(conn.execute(text(sql), params).scalar_one())


def leftovers(conn: Connection, trace_id: int) -> dict[str, int]:
    return {
        table: rows(conn, f"SELECT count(*) FROM {table} WHERE trace_id = :i", i=trace_id)
        for table in ("trace_points", "trace_segments", "trace_files")
    } | {"traces": rows(conn, "SELECT count(*) FROM traces WHERE id = :i", i=trace_id)}


def test_owner_purges_for_good(client: TestClient, token_for: Auth, connection: Connection) -> None:
    owner = token_for("mapper", "wanjiku")
    key = {"Idempotency-Key": "walk-to-forget"}
    created = upload(client, {**owner, **key}, walk(20), visibility="public", name="my street")
    assert created.status_code == 201
    trace_id = created.json()["id"]
    client.patch(
        f"/traces/{trace_id}",
        json={"name": "my street, renamed"},
        headers={**owner, "If-Match": created.headers.get("etag", '"1"')},
    )
    assert (
        rows(
            connection,
            "SELECT count(*) FROM feature_history WHERE collection = 'traces' AND feature_id = :i",
            i=trace_id,
        )
        >= 1
    )

    other = client.delete(f"/traces/{trace_id}?purge=true", headers=token_for("mapper", "otieno"))
    assert other.status_code == 403
    purged = client.delete(f"/traces/{trace_id}?purge=true", headers=owner)
    assert purged.status_code == 204
    assert leftovers(connection, trace_id) == {
        "trace_points": 0,
        "trace_segments": 0,
        "trace_files": 0,
        "traces": 0,
    }
    history = connection.execute(
        text(
            "SELECT action, changed_by, changes, snapshot FROM feature_history "
            "WHERE collection = 'traces' AND feature_id = :i"
        ),
        {"i": trace_id},
    ).all()
    assert [(h.action, h.changed_by, h.changes, h.snapshot) for h in history] == [
        ("purge", "wanjiku", {}, None)
    ]
    assert client.get(f"/traces/{trace_id}", headers=owner).status_code == 404
    # the stored answer to the upload is gone: the same key now makes a new trace
    again = upload(client, {**owner, **key}, walk(20), visibility="public", name="my street")
    assert again.status_code == 201 and again.json()["id"] != trace_id
    assert "idempotent-replayed" not in again.headers


def test_admin_purges_a_soft_deleted_trace(
    client: TestClient, token_for: Auth, connection: Connection
) -> None:
    owner = token_for("mapper", "amina")
    trace_id = upload(client, owner, walk(8)).json()["id"]
    assert client.delete(f"/traces/{trace_id}", headers=owner).status_code == 204
    assert leftovers(connection, trace_id)["trace_files"] == 1  # soft: the bytes stay
    assert (
        client.delete(
            f"/traces/{trace_id}?purge=true", headers=token_for("mapper", "otieno")
        ).status_code
        == 404
    )
    assert (
        client.delete(f"/traces/{trace_id}?purge=true", headers=token_for("admin")).status_code
        == 204
    )
    assert sum(leftovers(connection, trace_id).values()) == 0
    assert (
        client.delete(f"/traces/{trace_id}?purge=true", headers=token_for("admin")).status_code
        == 404
    )


def _trace_layer(base: str, headers: dict[str, str]) -> int:
    """Features in the traces layer of the z16 tile around the walk of :func:`walk`."""
    import math

    import httpx
    import mapbox_vector_tile

    lat, lon, z = -1.3129, 36.7880, 16
    x = int((lon + 180.0) / 360.0 * (1 << z))
    y = int((1.0 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2.0 * (1 << z))
    response = httpx.get(f"{base}/tiles/{z}/{x}/{y}.mvt", headers=headers, timeout=60)
    assert response.status_code in (200, 204), response.text
    if response.status_code == 204:
        return 0
    layers = mapbox_vector_tile.decode(response.content)
    return len(layers.get("traces", {}).get("features", []))


def test_a_purged_trace_leaves_the_tiles(live_server: LiveServer) -> None:
    """Committed on a real server: the purge moves the traces layer's tile counter."""
    import httpx

    owner = live_server.headers("mapper")
    created = httpx.post(
        f"{live_server.base_url}/traces?visibility=public&name=tile%20walk",
        content=walk(30),
        headers={**owner, "Content-Type": "application/gpx+xml"},
        timeout=60,
    )
    assert created.status_code == 201, created.text
    drawn = _trace_layer(live_server.base_url, owner)
    assert drawn >= 1
    purged = httpx.delete(
        f"{live_server.base_url}/traces/{created.json()['id']}?purge=true",
        headers=owner,
        timeout=60,
    )
    assert purged.status_code == 204
    assert _trace_layer(live_server.base_url, owner) == drawn - 1
