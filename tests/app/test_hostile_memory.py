"""Hostile files against a real server: a 4xx each, with the server's peak memory bounded.

Bombs (gzip, zip, XML entities in GPX and KML), a CSV with a 30 MB line and a
GeoPackage that is not SQLite are sent to a uvicorn server process. Before
each one the process's peak resident memory is reset (``/proc/PID/clear_refs``)
and after the answer its ``VmHWM`` is read: the peak may rise above the memory
held before by at most :data:`BOUND_MB`, derived from the settings: the
part of a body kept in memory before it is spooled to disk
(``SPOOL_MEMORY_BYTES``), a working margin and one libxml2 text node (capped
at 10 MB), below the upload limit and an eighth of the decompressed limit a
bomb would reach if it were inflated in memory. Nothing is timed.
"""

from __future__ import annotations

import gzip
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from geo.core.cluster import EmbeddedCluster
from geo.core.uploads import SPOOL_MEMORY_BYTES
from tests.support.live import LiveServer, live_server_running

MAX_UPLOAD_MB = 40
MAX_DECOMPRESSED_MB = 250  # the default
MB = 1024 * 1024
XML_TEXT_CAP_MB = 10  # libxml2 refuses a longer text node (lxml's huge_tree is off)
# a GPX upload may be read twice (the fast read, then the exact one on anything
# unusual), so one more capped text node may be held at the peak
BOUND_MB = SPOOL_MEMORY_BYTES / MB + 16 + XML_TEXT_CAP_MB
assert BOUND_MB < MAX_UPLOAD_MB and BOUND_MB < MAX_DECOMPRESSED_MB / 8

LOL = (
    b'<!DOCTYPE bomb [<!ENTITY lol "lol">'
    + b"".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'.encode()
        for i in range(1, 10)
    )
    + b"]>"
)
"""A billion laughs: ten to the ninth 'lol's once its entities are expanded."""


@pytest.fixture(scope="module")
def server(cluster: EmbeddedCluster) -> Iterator[LiveServer]:
    with live_server_running(
        cluster,
        structures=20,
        database="makazi_hostile_memory",
        max_upload_mb=str(MAX_UPLOAD_MB),
        max_decompressed_mb=str(MAX_DECOMPRESSED_MB),
        import_async_mb=str(MAX_UPLOAD_MB),  # imported in the request: the answer is the 4xx
    ) as live:
        yield live


def _status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def _reset_peak(pid: int) -> bool:
    """Reset the process's peak RSS to its current RSS (Linux 4.0+; needs ptrace rights)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _gzip_bomb() -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9) as out:
        out.write(b'<?xml version="1.0"?><gpx version="1.1">')
        block = b" " * (16 * MB)
        for _ in range(64):  # 1 GB of blanks, about 1 MB compressed
            out.write(block)
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _zip_bomb(name: str, head: bytes) -> bytes:
    """Three members of 100 MB blanks each (300 MB unpacked, about 0.3 MB packed)."""
    member = head + b" " * (100 * MB)
    return _zip({f"{i}-{name}": member for i in range(3)})


def _kml_bomb() -> bytes:
    return (
        b'<?xml version="1.0"?>' + LOL + b'<kml xmlns="http://www.opengis.net/kml/2.2">'
        b"<Placemark><name>&lol9;</name><Point><coordinates>36.8,-1.3</coordinates></Point>"
        b"</Placemark></kml>"
    )


def _trace(body: bytes, content_type: str) -> tuple[str, dict[str, str], bytes]:
    return "/traces", {"Content-Type": content_type}, body


CASES = {
    "GPX gzip bomb (1 GB)": (lambda: _trace(_gzip_bomb(), "application/gzip"), 413),
    "GPX zip bomb (3 x 100 MB)": (
        lambda: _trace(_zip_bomb("t.gpx", b"<gpx>"), "application/zip"),
        413,
    ),
    "GPX billion laughs": (
        lambda: _trace(
            b'<?xml version="1.0"?>' + LOL + b'<gpx version="1.1"><wpt lat="1" lon="2">'
            b"<name>&lol9;</name></wpt></gpx>",
            "application/gpx+xml",
        ),
        400,
    ),
    "import zip bomb (3 x 100 MB GeoJSON)": (
        lambda: ("/imports", {"name": "bomb.zip"}, _zip_bomb("b.geojson", b'{"type":')),
        413,
    ),
    "KML billion laughs": (lambda: ("/imports", {"name": "bomb.kml"}, _kml_bomb()), 400),
    "KMZ billion laughs": (
        lambda: ("/imports", {"name": "bomb.kmz"}, _zip({"doc.kml": _kml_bomb()})),
        400,
    ),
    "CSV with a 30 MB line": (
        lambda: (
            "/imports",
            {"name": "long.csv"},
            b"name,WKT\n" + b"x" * (30 * MB) + b",POINT (36.8 -1.3)\n",
        ),
        413,
    ),
    "GeoPackage that is not SQLite (30 MB)": (
        lambda: ("/imports", {"name": "fake.gpkg"}, b"PK-not-really\x00\x01" * (2 * MB)),
        400,
    ),
}


def _written(server: LiveServer) -> int:
    ((count,),) = server.query(
        "SELECT (SELECT count(*) FROM structures) + (SELECT count(*) FROM imports) "
        "+ (SELECT count(*) FROM traces) + (SELECT count(*) FROM trace_files)"
    )
    return int(count)


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_file_is_refused_with_bounded_memory(server: LiveServer, case: str) -> None:
    build, status = CASES[case]
    path, options, body = build()
    pid = server.process.pid
    before_rows = _written(server)
    # warm the route once with a harmless request so imports, caches and pools exist
    httpx.get(f"{server.base_url}/healthz", timeout=30)
    reset = _reset_peak(pid)
    before = _status(pid)
    headers = server.headers("mapper")
    if path == "/traces":
        response = httpx.post(
            server.base_url + path, content=body, headers={**headers, **options}, timeout=300
        )
    else:
        response = httpx.post(
            server.base_url + path,
            files={"file": (options["name"], body, "application/octet-stream")},
            data={"collection": "structures"},
            headers=headers,
            timeout=300,
        )
    after = _status(pid)
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/problem+json")
    assert _written(server) == before_rows
    baseline = before["VmRSS"] if reset else before["VmHWM"]
    growth_mb = (after["VmHWM"] - baseline) / MB
    print(f"{case}: {len(body) / MB:.1f} MB sent, peak RSS +{growth_mb:.1f} MB")  # with -s
    assert growth_mb < BOUND_MB, f"{case}: peak RSS rose {growth_mb:.1f} MB (bound {BOUND_MB} MB)"
