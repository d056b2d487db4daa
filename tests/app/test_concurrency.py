"""Concurrent clients against a real server: no lost update, one result per Idempotency-Key.

* Eight editors each append five marks to one settlement's ``notes`` with
  ``If-Match``; a 412 is answered by reading the feature again and retrying.
  Every editor gets all its writes in, the final version is the first plus the
  number of successful writes, the history has one entry per write and every
  mark is in the notes (nothing overwritten).
* Six clients send the same trace, then the same import, at the same moment
  with one ``Idempotency-Key``: one trace, one import, its features stored once,
  and every client gets the same answer.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from geo.core.cluster import EmbeddedCluster
from tests.support.features import squares
from tests.support.live import LiveServer, live_server_running

EDITORS = 8
WRITES = 5
SENDERS = 6
OWNED = "SELECT count(*) FROM traces WHERE owner = :o"


@pytest.fixture(scope="module")
def live_server(cluster: EmbeddedCluster) -> Iterator[LiveServer]:
    """A server of this module's own (its writes touch no other test's counts)."""
    with live_server_running(cluster, structures=50, database="makazi_concurrency") as live:
        yield live


def _together(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` in ``count`` threads released at once; their results (or exceptions)."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # surfaced by the assertions below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert all(not thread.is_alive() for thread in threads), "a client hung"
    return results


def _scalar(server: LiveServer, sql: str, **params: Any) -> Any:
    engine = create_engine(server.database_url)
    with engine.connect() as conn:
        value = conn.execute(text(sql), params).scalar_one()
    engine.dispose()
    return value


def test_parallel_editors_lose_no_update(live_server: LiveServer) -> None:
    admin = live_server.headers("admin")
    created = httpx.post(
        f"{live_server.base_url}/collections/settlements/items?force=true",
        json={
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [
                    [[36.78, -1.32], [36.79, -1.32], [36.79, -1.31], [36.78, -1.31], [36.78, -1.32]]
                ],
            },
            "properties": {"name": "Concurrency test", "notes": ""},
        },
        headers=admin,
        timeout=30,
    )
    assert created.status_code == 201, created.text
    url = created.headers["location"]

    def edit(editor: int) -> dict[str, int]:
        tally = {"ok": 0, "stale": 0}
        with httpx.Client(timeout=60, headers=admin) as http:
            for n in range(WRITES):
                for _attempt in range(200):
                    current = http.get(url)
                    assert current.status_code == 200, current.text
                    notes = current.json()["properties"]["notes"] or ""
                    patched = http.patch(
                        url,
                        json={"properties": {"notes": f"{notes}e{editor}.{n};"}},
                        headers={"If-Match": current.headers["etag"]},
                    )
                    if patched.status_code == 200:
                        tally["ok"] += 1
                        break
                    assert patched.status_code == 412, patched.text
                    assert patched.headers["content-type"].startswith("application/problem+json")
                    tally["stale"] += 1
                else:
                    raise AssertionError(f"editor {editor} never got write {n} in")
        return tally

    tallies = _together(EDITORS, edit)
    errors = [t for t in tallies if isinstance(t, BaseException)]
    assert not errors, errors
    successes = sum(t["ok"] for t in tallies)
    assert successes == EDITORS * WRITES
    assert sum(t["stale"] for t in tallies) > 0, (
        "the editors never collided: the test proves little"
    )
    final = httpx.get(url, timeout=30)
    assert final.headers["etag"] == f'"{1 + successes}"'
    notes = final.json()["properties"]["notes"]
    marks = {f"e{e}.{n}" for e in range(EDITORS) for n in range(WRITES)}
    assert set(notes.rstrip(";").split(";")) == marks
    feature_id = int(url.rstrip("/").rsplit("/", 1)[1])
    history = _scalar(
        live_server,
        "SELECT count(*) FROM feature_history WHERE collection = 'settlements' AND feature_id = :i",
        i=feature_id,
    )
    assert history == 1 + successes


def _walk() -> bytes:
    points = "".join(
        f'<trkpt lat="{-1.3 + i * 1e-5:.6f}" lon="36.8"><time>2026-05-01T08:{i // 60:02d}:'
        f"{i % 60:02d}Z</time></trkpt>"
        for i in range(300)
    )
    return (
        '<?xml version="1.0"?><gpx version="1.1" creator="test" '
        f'xmlns="http://www.topografix.com/GPX/1/1"><trk><trkseg>{points}</trkseg></trk></gpx>'
    ).encode()


def test_parallel_identical_uploads_with_one_key_make_one_trace(live_server: LiveServer) -> None:
    body = _walk()
    headers = {
        **live_server.headers("mapper"),
        "Content-Type": "application/gpx+xml",
        "Idempotency-Key": "concurrent-trace-1",
    }
    before = _scalar(live_server, OWNED, o="live-mapper")
    answers = _together(
        SENDERS,
        lambda _: httpx.post(
            f"{live_server.base_url}/traces", content=body, headers=headers, timeout=120
        ),
    )
    assert all(isinstance(a, httpx.Response) for a in answers), answers
    assert all(a.status_code in (200, 201) for a in answers), [a.text[:300] for a in answers]
    ids = {a.json()["id"] for a in answers}
    assert len(ids) == 1
    assert _scalar(live_server, OWNED, o="live-mapper") == before + 1


def test_parallel_identical_imports_with_one_key_import_once(live_server: LiveServer) -> None:
    data = squares(20, prefix="CONC", west=36.781, south=-1.311, step=1e-4, size=5e-5)
    headers = {**live_server.headers("mapper"), "Idempotency-Key": "concurrent-import-1"}

    def send(_: int) -> httpx.Response:
        return httpx.post(
            f"{live_server.base_url}/imports",
            files={"file": ("c.geojson", io.BytesIO(data), "application/geo+json")},
            data={"collection": "structures"},
            headers=headers,
            timeout=120,
        )

    answers = _together(SENDERS, send)
    assert all(isinstance(a, httpx.Response) for a in answers), answers
    assert all(a.status_code == 201 for a in answers), [a.text[:300] for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == SENDERS - 1
    assert (
        _scalar(live_server, "SELECT count(*) FROM structures WHERE structure_number LIKE 'CONC-%'")
        == 20
    )
    assert (
        _scalar(
            live_server,
            "SELECT count(*) FROM imports WHERE id = :i",
            i=answers[0].json()["id"],
        )
        == 1
    )
