"""Who may do what: every operation in /api x every kind of caller, against API.md's roles.

One table says the least role each operation needs (``None``: anyone while
public read is on; ``"owner"``: the trace's owner or an admin). Every caller is
tried on every operation, least privileged first: anonymous, a wrong token, a
revoked token, then viewer to admin. A wrong or revoked token is a 401
everywhere (even where anonymous reads are fine: a client with a typo should
hear of it); no token where one is needed is a 401; too low a role is a 403;
enough is neither. Every body answered to a caller below ``enumerator`` is
searched for the demo's personal household values.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, text

from app.main import create_app
from geo.core.auth import ROLES, create_token, revoke_token
from geo.core.settings import Settings
from geo.demo.generator import generate
from geo.demo.loader import load
from tests.support.db import BoundDatabase
from tests.traces.test_traces import GPX, walk

Auth = Callable[..., dict[str, str]]

# (method, path, least role; "open": not about callers at all, tokens are not even read).
# {s} settlement, {f} structure (a feature), {st} structure,
# {h} household, {t} a public trace and {i} an import, both someone else's, {z}/{x}/{y} a tile.
OPERATIONS: list[tuple[str, str, str | None]] = [  # every operation /api lists
    ("GET", "/healthz", "open"),
    ("GET", "/", "open"),
    ("GET", "/conformance", "open"),
    ("GET", "/api", "open"),
    ("GET", "/collections", None),
    ("GET", "/collections/structures", None),
    ("GET", "/collections/structures/queryables", None),
    ("GET", "/collections/structures/items", None),
    ("GET", "/collections/settlements/items", None),
    ("GET", "/collections/facilities/items", None),
    ("GET", "/collections/traces/items", None),
    ("GET", "/collections/structures/items/{f}", None),
    ("GET", "/collections/structures/items/{f}/history", "viewer"),
    ("POST", "/collections/structures/items", "mapper"),
    ("PUT", "/collections/structures/items/{f}", "mapper"),
    ("PATCH", "/collections/structures/items/{f}", "mapper"),
    ("DELETE", "/collections/structures/items/{f}", "mapper"),
    ("GET", "/structures/{st}/households", "enumerator"),
    ("POST", "/structures/{st}/households", "enumerator"),
    ("GET", "/households/{h}", "enumerator"),
    ("PATCH", "/households/{h}", "enumerator"),
    ("DELETE", "/households/{h}", "enumerator"),
    ("GET", "/settlements/{s}/summary", None),
    ("GET", "/settlements/{s}/profile", None),
    ("PUT", "/settlements/{s}/profile", "planner"),
    ("POST", "/settlements/{s}/review", "planner"),
    ("GET", "/settlements/{s}/atlas.pdf", "viewer"),
    ("POST", "/analysis/impact", "viewer"),
    ("GET", "/analysis/access?facility_type=water_point&max_distance_m=100", "viewer"),
    ("GET", "/analysis/overlaps", "viewer"),
    ("GET", "/analysis/density?settlement_id={s}&cell_m=100", "viewer"),
    ("POST", "/analysis/impact?f=geojson", "planner"),
    ("GET", "/analysis/access?facility_type=water_point&max_distance_m=100&f=geojson", "planner"),
    ("GET", "/exports/structures?format=geojson", "planner"),
    ("GET", "/tiles/{z}/{x}/{y}.mvt", None),
    ("GET", "/tiles/tilejson.json", None),
    ("GET", "/tokens", "admin"),
    ("POST", "/tokens", "admin"),
    ("DELETE", "/tokens/matrix-target", "admin"),
    ("GET", "/traces", None),
    ("POST", "/traces", "mapper"),
    ("GET", "/traces/{t}", None),
    ("GET", "/traces/{t}/gpx", None),
    ("GET", "/traces/{t}/geojson", None),
    ("POST", "/traces/{t}/boundary", "mapper"),
    ("PATCH", "/traces/{t}", "owner"),
    ("DELETE", "/traces/{t}", "owner"),
    ("POST", "/imports", "mapper"),
    ("GET", "/imports/{i}", "owner"),
    ("GET", "/field/config.json", "open"),
    ("GET", "/field/me", "viewer"),
    ("GET", "/field/settlements/{s}", None),
    ("GET", "/field/settlements/{s}/package", None),
    ("GET", "/field/settlements/{s}/tiles.pmtiles", None),
    ("POST", "/conflicts", "mapper"),
    ("GET", "/conflicts", "planner"),
    ("POST", "/conflicts/{f}/resolution", "mapper"),
]

CALLERS = ["anonymous", "wrong token", "revoked token", *ROLES]


def tile_of(lon: float, lat: float, z: int) -> tuple[int, int, int]:
    n = 1 << z
    y = (1.0 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2.0 * n
    return z, int((lon + 180.0) / 360.0 * n), int(y)


def body_for(method: str, path: str) -> dict[str, Any]:
    """A plausible request body, so an allowed call is judged on its merits."""
    square = [
        [36.787, -1.313],
        [36.78704, -1.313],
        [36.78704, -1.31296],
        [36.787, -1.31296],
        [36.787, -1.313],
    ]
    if path.startswith("/analysis/impact"):
        return {
            "json": {"geometry": {"type": "Point", "coordinates": [36.787, -1.313]}, "buffer_m": 50}
        }
    if path.endswith("/profile"):
        return {"json": {"fields": {"hazards": {"value": "floods", "basis": "reported"}}}}
    if path.endswith("/review"):
        return {"json": {"to": "read_out", "block": "ZZ-99"}}
    if path == "/tokens":
        return {"json": {"name": "matrix-new", "role": "viewer"}}
    if path == "/traces":
        return {"content": walk(6), "headers": GPX}
    if path == "/imports":
        empty = b'{"type": "FeatureCollection", "features": []}'
        return {
            "files": {"file": ("e.geojson", empty, "application/geo+json")},
            "data": {"collection": "facilities", "dry_run": "true"},
        }
    if "/households" in path:
        return {"json": {"members": 3, "tenure": "tenant"}}
    if path.startswith("/traces/") and method == "PATCH":
        return {"json": {"name": "renamed"}}
    if method in ("POST", "PUT", "PATCH") and "/collections/" in path:
        return {
            "json": {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [square]},
                "properties": {"structure_number": "MX-0001", "use": "residential"},
            }
        }
    return {}


class TestMatrix:
    @pytest.fixture
    def app_settings(self, settings: Settings) -> Settings:
        # the wrong tokens below are deliberate: no failed-attempt limit here
        return settings.model_copy(update={"token_failures_per_minute": 0})

    def test_every_operation_for_every_caller(
        self, app_settings: Settings, db: BoundDatabase, connection: Connection, token_for: Auth
    ) -> None:
        load(connection, generate(150, seed=3))
        ids = connection.execute(
            text(
                "SELECT (SELECT min(id) FROM settlements) AS s, "
                "(SELECT min(structure_id) FROM households) AS st, "
                "(SELECT max(id) FROM structures) AS f, (SELECT min(id) FROM households) AS h"
            )
        ).one()
        personal = [
            value
            for row in connection.execute(
                text("SELECT head_name, phone FROM households ORDER BY id LIMIT 40")
            )
            for value in row
            if value
        ]
        assert personal
        create_token(connection, name="matrix-target", role="viewer")
        revoked = create_token(connection, name="matrix-revoked", role="admin")
        revoke_token(connection, name="matrix-revoked")
        headers: dict[str, dict[str, str]] = {
            "anonymous": {},
            "wrong token": {"Authorization": "Bearer mkz_not-a-real-token"},
            "revoked token": {"Authorization": f"Bearer {revoked}"},
            **{role: token_for(role) for role in ROLES},
        }
        with TestClient(create_app(app_settings, database=db)) as client:
            owner = token_for("mapper", "trace-owner")
            trace = client.post(
                "/traces?visibility=public&name=matrix", content=walk(12), headers={**owner, **GPX}
            )
            assert trace.status_code == 201, trace.text
            point = {
                "type": "Feature",
                "properties": {"type": "water_point"},
                "geometry": {"type": "Point", "coordinates": [36.787, -1.313]},
            }
            tap = json.dumps({"type": "FeatureCollection", "features": [point]}).encode()
            imported = client.post(
                "/imports",
                files={"file": ("tap.geojson", tap, "application/geo+json")},
                data={"collection": "facilities"},
                headers=owner,
            )
            assert imported.status_code in (200, 201), imported.text
            z, x, y = tile_of(36.787, -1.313, 14)
            values = {
                "i": imported.json()["id"],
                "s": ids.s,
                "st": ids.st,
                "f": ids.f,
                "h": ids.h,
                "t": trace.json()["id"],
                "z": z,
                "x": x,
                "y": y,
            }
            failures = []
            for method, template, least in OPERATIONS:
                path = template.format(**values)
                for caller in CALLERS:
                    response = client.request(
                        method, path, **_merge(body_for(method, template), headers[caller])
                    )
                    got = response.status_code
                    want = _expected(caller, least)
                    if (want == "allowed" and got in (401, 403)) or (
                        want != "allowed" and got != want
                    ):
                        failures.append(f"{method} {path} as {caller}: {got}, wanted {want}")
                    if got >= 500:
                        failures.append(f"{method} {path} as {caller}: {got}")
                    if not _sees_personal(caller):
                        leaked = [v for v in personal if v.encode() in response.content]
                        if leaked:
                            failures.append(f"{method} {path} as {caller} shows {leaked[:2]}")
            assert failures == [], "\n".join(failures)


def _sees_personal(caller: str) -> bool:
    return caller in ROLES and ROLES.index(caller) >= ROLES.index("enumerator")


def test_the_table_covers_every_operation_in_the_api(client: TestClient) -> None:
    listed = {(method, template.split("?")[0]) for method, template, _ in OPERATIONS}
    listed = {(m, re.sub(r"\{[a-z]+\}", "{}", p)) for m, p in listed}
    for path, operations in client.get("/api").json()["paths"].items():
        concrete = path.replace("{collection_id}", "structures").replace("{name}", "matrix-target")
        concrete = re.sub(r"\{[a-z_]+\}", "{}", concrete)
        for method in operations:
            if method in ("get", "post", "put", "patch", "delete"):
                assert (method.upper(), concrete) in listed, f"{method.upper()} {path}"


def _merge(request: dict[str, Any], auth: dict[str, str]) -> dict[str, Any]:
    return {**request, "headers": {**request.get("headers", {}), **auth}}


def _expected(caller: str, least: str | None) -> int | str:
    if least == "open":
        return "allowed"
    if caller in ("wrong token", "revoked token"):
        return 401
    if least is None:
        return "allowed"
    if caller == "anonymous":
        return 401
    if least == "owner":
        return "allowed" if caller == "admin" else 403
    return "allowed" if ROLES.index(caller) >= ROLES.index(least) else 403
