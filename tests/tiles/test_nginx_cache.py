"""deploy/nginx.conf in front of a live server: tiles are cached, revalidated, never shared.

Debian's nginx runs the shipped site file as it is, but for the listen port,
the upstream and the cache folder. Tiles live 2 s here (MAKAZI_TILE_MAX_AGE_S),
so the test sees the whole life of a cached tile: a MISS, a HIT, and after an
edit a revalidation that brings the new tile; an unchanged tile revalidates
with a 304 from the app. Requests with a token are never served from or put
into the cache.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import create_engine, text

from geo.core.cluster import EmbeddedCluster
from tests.support.live import LiveServer, live_server_running
from tests.support.nginx import NGINX, nginx_in_front

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (Debian package nginx; system-deps.sh test)"
)


@pytest.fixture(scope="module")
def served(cluster: EmbeddedCluster) -> Iterator[LiveServer]:
    with live_server_running(
        cluster, structures=300, database="makazi_nginx", tile_max_age_s="2"
    ) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(served: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """nginx with the shipped site file, in front of the live server; its base URL."""
    upstream = served.base_url.removeprefix("http://")
    with nginx_in_front([upstream], tmp_path_factory.mktemp("nginx")) as base:
        yield base


def tile_url(lon: float, lat: float, z: int = 16) -> str:
    n = 1 << z
    y = (1.0 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2.0 * n
    return f"/tiles/{z}/{int((lon + 180.0) / 360.0 * n)}/{int(y)}.mvt"


def structure_tiles(served: LiveServer) -> list[tuple[int, str]]:
    """A structure in each of two settlements, with the tile that holds it."""
    engine = create_engine(served.database_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT DISTINCT ON (settlement_id) id, ST_X(ST_PointOnSurface(geom)) AS x, "
                "ST_Y(ST_PointOnSurface(geom)) AS y FROM structures "
                "WHERE settlement_id IS NOT NULL ORDER BY settlement_id, id LIMIT 2"
            )
        ).all()
    engine.dispose()
    return [(int(r.id), tile_url(r.x, r.y)) for r in rows]


def status_of(response: httpx.Response) -> str:
    return response.headers.get("x-cache-status", "-")


def test_tiles_are_cached_and_revalidated_after_an_edit(served: LiveServer, proxy: str) -> None:
    (edited, tile), (_, other) = structure_tiles(served)
    with httpx.Client(base_url=proxy, timeout=30) as client:
        first = client.get(tile)
        assert first.status_code == 200 and status_of(first) == "MISS"
        again = client.get(tile)
        assert status_of(again) == "HIT" and again.content == first.content
        assert status_of(client.get(other)) == "MISS"

        mapper = served.headers("mapper")
        item = f"/collections/structures/items/{edited}"
        read = client.get(item, headers=mapper)
        assert status_of(read) == "BYPASS"  # a token: never from or into the cache
        patched = client.patch(
            item,
            json={"properties": {"storeys": 7}},
            headers={
                **mapper,
                "If-Match": read.headers["etag"],
                "Content-Type": "application/merge-patch+json",
            },
        )
        assert patched.status_code == 200, patched.text

        # past max-age: nginx keeps expiry in whole seconds of a clock it reads once per
        # event loop, so a 2 s tile can look fresh for almost 3 s after it was stored
        time.sleep(4)
        fresh = client.get(tile)
        assert fresh.status_code == 200
        assert status_of(fresh) == "EXPIRED"  # revalidated: the ETag changed, a new tile came
        assert fresh.headers["etag"] != first.headers["etag"]
        assert status_of(client.get(tile)) == "HIT"
        unchanged = client.get(other)
        assert status_of(unchanged) == "REVALIDATED"  # the app answered 304
