"""Typed contracts: every documented JSON answer matches its model, and ``/api`` shows it.

Each test makes real requests and validates the real bodies twice: with the
pydantic model in strict mode (closed models forbid unknown members, so a
member added to an answer but not to its model fails here), and with the
schema ``/api`` publishes for that operation and status, in its OpenAPI 3.0
form (so the downgrade, ``nullable`` included, is checked against real data).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel
from sqlalchemy import Connection, text

from app.main import create_app
from app.openapi import REF_PREFIX
from app.problems import PROBLEM_JSON
from geo.analysis.documents import AccessSummary, ImpactSummary, SettlementSummary
from geo.analysis.summary import BASIS
from geo.core.db import Database, make_engine
from geo.core.documents import Health, Problem
from geo.core.settings import Settings
from geo.layers.documents import (
    CollectionDocument,
    CollectionList,
    Conformance,
    FeaturesCreated,
    History,
    LandingPage,
    Queryables,
)
from geo.layers.households import HOUSEHOLD_PROPERTIES, Household, HouseholdList
from geo.layers.registry import COLLECTIONS, ENUMS
from geo.tiles.documents import TileJson
from geo.traces.documents import TraceList, TraceSummary
from tests.support.db import BoundDatabase
from tests.traces.test_traces import upload, walk

Headers = Callable[..., dict[str, str]]
JSON = "application/json"
GEOJSON = "application/geo+json"

#: (method, path, status, model, media type) of every documented JSON answer.
CONTRACTS: list[tuple[str, str, int, type[BaseModel], str]] = [
    ("GET", "/healthz", 200, Health, JSON),
    ("GET", "/", 200, LandingPage, JSON),
    ("GET", "/conformance", 200, Conformance, JSON),
    ("GET", "/collections", 200, CollectionList, JSON),
    ("GET", "/collections/{collection_id}", 200, CollectionDocument, JSON),
    (
        "GET",
        "/collections/{collection_id}/queryables",
        200,
        Queryables,
        "application/schema+json",
    ),
    ("POST", "/collections/{collection_id}/items", 201, FeaturesCreated, JSON),
    ("GET", "/collections/{collection_id}/items/{feature_id}/history", 200, History, JSON),
    ("GET", "/structures/{structure_id}/households", 200, HouseholdList, JSON),
    ("POST", "/structures/{structure_id}/households", 201, Household, JSON),
    ("GET", "/households/{household_id}", 200, Household, JSON),
    ("PATCH", "/households/{household_id}", 200, Household, JSON),
    ("POST", "/traces", 201, TraceSummary, JSON),
    ("POST", "/traces", 200, TraceSummary, JSON),
    ("GET", "/traces", 200, TraceList, JSON),
    ("GET", "/traces/{trace_id}", 200, TraceSummary, JSON),
    ("PATCH", "/traces/{trace_id}", 200, TraceSummary, JSON),
    ("GET", "/settlements/{settlement_id}/summary", 200, SettlementSummary, JSON),
    ("POST", "/analysis/impact", 200, ImpactSummary, JSON),
    ("GET", "/analysis/access", 200, AccessSummary, JSON),
    ("GET", "/tiles/tilejson.json", 200, TileJson, JSON),
]
MODELS = {(method, path, status): model for method, path, status, model, _ in CONTRACTS}
MEDIA = {(method, path, status): media for method, path, status, _, media in CONTRACTS}


# ---------------------------------------------------------------------- helpers
def _ref_name(schema: dict[str, Any]) -> str:
    """The component a response schema names (``$ref``, or an ``allOf`` of one)."""
    ref = schema.get("$ref") or (schema.get("allOf") or [{}])[0].get("$ref")
    assert isinstance(ref, str) and ref.startswith(REF_PREFIX), schema
    return ref[len(REF_PREFIX) :]


def _api_schema(spec: dict[str, Any], method: str, path: str, status: str, media: str) -> str:
    """The component ``/api`` documents for an operation's ``status`` answer in ``media``."""
    response = spec["paths"][path][method.lower()]["responses"][status]
    return _ref_name(response["content"][media]["schema"])


def _validate_oas30(spec: dict[str, Any], name: str, body: Any) -> None:
    """Validate ``body`` against the published 3.0 schema ``name`` (refs resolved in /api)."""
    from openapi_schema_validator import OAS30Validator, validate

    validate(
        body, {"$ref": REF_PREFIX + name, "components": spec["components"]}, cls=OAS30Validator
    )


class Contracts:
    """Checks real answers against their model and against ``/api``."""

    def __init__(self, client: TestClient) -> None:
        self.spec: dict[str, Any] = client.get("/api").json()

    def check(self, method: str, path: str, response: httpx.Response) -> dict[str, Any]:
        """Validate a success answer of the operation ``method path``; its JSON."""
        key = (method, path, response.status_code)
        assert key in MODELS, response.text
        model, media = MODELS[key], MEDIA[key]
        assert response.headers["content-type"].startswith(media), response.headers
        model.model_validate_json(response.content, strict=True)
        name = _api_schema(self.spec, method, path, str(response.status_code), media)
        assert name == model.__name__
        body: dict[str, Any] = response.json()
        _validate_oas30(self.spec, name, body)
        return body

    def problem(self, method: str, path: str, response: httpx.Response) -> dict[str, Any]:
        """Validate an error answer: a problem document, as ``/api`` says for 4XX/5XX."""
        assert response.status_code >= 400, response.text
        assert response.headers["content-type"].startswith(PROBLEM_JSON)
        problem = Problem.model_validate_json(response.content, strict=True)
        assert problem.status == response.status_code
        documented = self.spec["paths"][path][method.lower()]["responses"]
        status = str(response.status_code)
        key = status if status in documented else f"{status[0]}XX"
        name = _api_schema(self.spec, method, path, key, PROBLEM_JSON)
        assert name == Problem.__name__
        body: dict[str, Any] = response.json()
        _validate_oas30(self.spec, name, body)
        return body


@pytest.fixture
def contracts(client: TestClient) -> Contracts:
    return Contracts(client)


# ------------------------------------------------------------------------ data
SETTLEMENT = "MULTIPOLYGON(((36.78 -1.31,36.79 -1.31,36.79 -1.30,36.78 -1.30,36.78 -1.31)))"
EMPTY = "MULTIPOLYGON(((36.70 -1.40,36.71 -1.40,36.71 -1.39,36.70 -1.39,36.70 -1.40)))"


@pytest.fixture
def places(connection: Connection) -> dict[str, int]:
    """A settlement with 9 structures (3 enumerated), two facilities, and an empty one.

    Small enough that anonymous and viewer answers have suppressed (null) counts.
    """

    def insert(statement: str, **params: Any) -> int:
        return int(connection.execute(text(statement + " RETURNING id"), params).scalar_one())

    ids = {
        "settlement": insert(
            "INSERT INTO settlements (name, geom) VALUES ('Contract', ST_GeomFromText(:g, 4326))",
            g=SETTLEMENT,
        ),
        "empty": insert(
            "INSERT INTO settlements (name, status, geom) "
            "VALUES ('Empty', 'proposed', ST_GeomFromText(:g, 4326))",
            g=EMPTY,
        ),
    }
    uses = ["residential"] * 7 + ["business"] * 2
    structures = [
        insert(
            "INSERT INTO structures (structure_number, use, geom) "
            "VALUES (:n, :u, ST_SetSRID(ST_MakePoint(:x, -1.305), 4326))",
            n=f"C-{i}",
            u=use,
            x=36.781 + i * 0.0005,
        )
        for i, use in enumerate(uses)
    ]
    ids["outside"] = insert(
        "INSERT INTO structures (structure_number, use, geom) "
        "VALUES ('OUT-1', NULL, ST_SetSRID(ST_MakePoint(36.795, -1.305), 4326))"
    )
    for index, members in enumerate((4, 2, 6)):
        insert(
            "INSERT INTO households (structure_id, members, head_name) VALUES (:s, :m, 'X')",
            s=structures[index],
            m=members,
        )
    for kind, condition, x in (("water_point", "working", 36.782), ("toilet_block", None, 36.7)):
        insert(
            "INSERT INTO facilities (type, condition, geom) "
            "VALUES (:t, :c, ST_SetSRID(ST_MakePoint(:x, -1.305), 4326))",
            t=kind,
            c=condition,
            x=x,
        )
    ids["structure"] = structures[0]
    return ids


# ----------------------------------------------------------------------- tests
def test_service_documents(client: TestClient, contracts: Contracts) -> None:
    contracts.check("GET", "/healthz", client.get("/healthz"))
    contracts.check("GET", "/", client.get("/", headers={"Accept": JSON}))
    contracts.check("GET", "/conformance", client.get("/conformance"))
    contracts.check("GET", "/tiles/tilejson.json", client.get("/tiles/tilejson.json"))


def test_collection_documents(
    client: TestClient, contracts: Contracts, places: dict[str, int]
) -> None:
    listed = contracts.check("GET", "/collections", client.get("/collections"))
    assert [c["id"] for c in listed["collections"]] == list(COLLECTIONS)
    for name in COLLECTIONS:
        contracts.check("GET", "/collections/{collection_id}", client.get(f"/collections/{name}"))
        contracts.check(
            "GET",
            "/collections/{collection_id}/queryables",
            client.get(f"/collections/{name}/queryables"),
        )


def test_bulk_create_and_history(
    client: TestClient, contracts: Contracts, token_for: Headers
) -> None:
    mapper = token_for("mapper", "wanjiku")
    ring = [[36.785, -1.305], [36.7851, -1.305], [36.7851, -1.3049], [36.785, -1.305]]
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"structure_number": f"B-{i}", "use": "residential"},
        }
        for i in range(2)
    ]
    created = contracts.check(
        "POST",
        "/collections/{collection_id}/items",
        client.post(
            "/collections/structures/items",
            content=json.dumps({"type": "FeatureCollection", "features": features}),
            headers={**mapper, "Content-Type": GEOJSON},
        ),
    )
    assert created["numberCreated"] == 2
    url = created["created"][0]["href"]
    patched = client.patch(
        url,
        json={"properties": {"use": "business", "wall_material": None}},
        headers={**mapper, "If-Match": '"1"'},
    )
    assert patched.status_code == 200, patched.text
    assert client.delete(url, headers={**mapper, "If-Match": '"2"'}).status_code == 204
    history = contracts.check(
        "GET",
        "/collections/{collection_id}/items/{feature_id}/history",
        client.get(f"{url}/history", headers=token_for("viewer")),
    )
    assert [v["action"] for v in history["versions"]] == ["create", "update", "delete"]


def test_household_documents(
    client: TestClient, contracts: Contracts, token_for: Headers, places: dict[str, int]
) -> None:
    enumerator = token_for("enumerator")
    sid = places["structure"]
    record = contracts.check(
        "POST",
        "/structures/{structure_id}/households",
        client.post(
            f"/structures/{sid}/households",
            json={"head_name": "Achieng", "members": 3, "tenure": "tenant"},
            headers=enumerator,
        ),
    )
    assert record["phone"] is None
    contracts.check(
        "GET",
        "/households/{household_id}",
        client.get(f"/households/{record['id']}", headers=enumerator),
    )
    contracts.check(
        "PATCH",
        "/households/{household_id}",
        client.patch(
            f"/households/{record['id']}",
            json={"members": None, "rent_kes": 1500},
            headers={**enumerator, "If-Match": '"1"'},
        ),
    )
    listed = contracts.check(
        "GET",
        "/structures/{structure_id}/households",
        client.get(f"/structures/{sid}/households", headers=enumerator),
    )
    assert len(listed["households"]) == 2


ODD_GPX = b"""<?xml version="1.0"?>
<gpx version="1.1" creator="contract" xmlns="http://www.topografix.com/GPX/1/1">
<wpt lat="-1.3125" lon="36.7885"><name>Tap</name></wpt>
<rte><rtept lat="-1.3126" lon="36.7886"/><rtept lat="-1.3127" lon="36.7886"/></rte>
<trk><trkseg>
<trkpt lat="north" lon="36.7880"/>
<trkpt lat="-1.3130" lon="36.7880"/>
<trkpt lat="-1.3131" lon="36.7880"/>
</trkseg></trk>
</gpx>"""


def test_trace_documents(
    client: TestClient, contracts: Contracts, token_for: Headers, places: dict[str, int]
) -> None:
    mapper = token_for("mapper", "otieno")
    first = contracts.check("POST", "/traces", upload(client, mapper, walk()))
    again = contracts.check("POST", "/traces", upload(client, mapper, walk()))
    assert again["id"] == first["id"]
    odd = contracts.check(
        "POST", "/traces", upload(client, mapper, ODD_GPX, settlement_id=places["settlement"])
    )
    assert odd["stats"]["duration_s"] is None and odd["stats"]["started_at"] is None
    assert odd["dropped"][0]["first"]["value"] == "north"
    assert odd["settlement_id"] == places["settlement"]
    contracts.check(
        "GET", "/traces/{trace_id}", client.get(f"/traces/{first['id']}", headers=mapper)
    )
    changed = contracts.check(
        "PATCH",
        "/traces/{trace_id}",
        client.patch(
            f"/traces/{odd['id']}",
            json={"visibility": "public", "settlement_id": None},
            headers={**mapper, "If-Match": f'"{odd["version"]}"'},
        ),
    )
    assert changed["settlement_id"] is None
    mine = contracts.check("GET", "/traces", client.get("/traces", headers=mapper))
    assert mine["numberReturned"] == 2
    paged = contracts.check("GET", "/traces", client.get("/traces?limit=1", headers=mapper))
    assert [link["rel"] for link in paged["links"]] == ["self", "next"]
    public = contracts.check("GET", "/traces", client.get("/traces"))
    assert [trace["id"] for trace in public["traces"]] == [odd["id"]]


@pytest.mark.parametrize("role", [None, "viewer", "planner"])
def test_analysis_documents(
    client: TestClient,
    contracts: Contracts,
    token_for: Headers,
    places: dict[str, int],
    role: str | None,
) -> None:
    """Raw counts (planner) and suppressed ones (anonymous, viewer: nulls) both validate."""
    headers = token_for(role) if role else {}
    summary = contracts.check(
        "GET",
        "/settlements/{settlement_id}/summary",
        client.get(f"/settlements/{places['settlement']}/summary", headers=headers),
    )
    assert (summary["households"] is None) == (role != "planner")
    assert bool(summary["suppressed"]) == (role != "planner")
    empty = contracts.check(
        "GET",
        "/settlements/{settlement_id}/summary",
        client.get(f"/settlements/{places['empty']}/summary", headers=headers),
    )
    assert empty["share_enumerated"] is None
    if role is None:
        return
    corridor = {
        "geometry": {"type": "LineString", "coordinates": [[36.780, -1.305], [36.796, -1.305]]},
        "buffer_m": 20,
    }
    impact = contracts.check(
        "POST", "/analysis/impact", client.post("/analysis/impact", json=corridor, headers=headers)
    )
    assert None in [entry["settlement_id"] for entry in impact["by_settlement"]]
    assert (impact["households"] is None) == (role != "planner")
    for params in (
        {"facility_type": "water_point", "max_distance_m": 100},
        {
            "facility_type": "water_point",
            "max_distance_m": 100,
            "settlement_id": places["settlement"],
        },
        {"facility_type": "clinic", "max_distance_m": 500, "settlement_id": places["empty"]},
    ):
        contracts.check(
            "GET",
            "/analysis/access",
            client.get("/analysis/access", params=params, headers=headers),
        )


def test_problem_documents(
    client: TestClient, contracts: Contracts, token_for: Headers, places: dict[str, int]
) -> None:
    mapper = token_for("mapper")
    enumerator = token_for("enumerator")
    missing = contracts.problem("GET", "/traces/{trace_id}", client.get("/traces/999999"))
    assert missing["instance"] == "/traces/999999" and missing["request_id"]
    bad_query = contracts.problem("GET", "/traces", client.get("/traces?limit=0"))
    assert bad_query["errors"][0]["field"] == "query.limit"
    contracts.problem(
        "GET", "/analysis/access", client.get("/analysis/access?facility_type=x&max_distance_m=1")
    )
    invalid = contracts.problem(
        "POST",
        "/analysis/impact",
        client.post("/analysis/impact", json={"geometry": None, "colour": 1}, headers=mapper),
    )
    assert invalid["status"] == 422 and invalid["errors"]
    record = client.post(
        f"/structures/{places['structure']}/households", json={"members": 1}, headers=enumerator
    ).json()
    stale = contracts.problem(
        "PATCH",
        "/households/{household_id}",
        client.patch(
            f"/households/{record['id']}",
            json={"members": 2},
            headers={**enumerator, "If-Match": '"7"'},
        ),
    )
    assert stale["current_version"] == 1
    not_xml = contracts.problem(
        "POST", "/traces", upload(client, mapper, b"<?xml version='1.0'?>\n<gpx><trk>")
    )
    assert not_xml["status"] == 400 and "line" in not_xml
    contracts.problem(
        "DELETE",
        "/collections/{collection_id}/items/{feature_id}",
        client.delete("/collections/traces/items/1", headers={**mapper, "If-Match": '"1"'}),
    )


def test_problem_document_5xx(settings: Settings) -> None:
    dead = Settings(
        database_url="postgresql://nobody:x@127.0.0.1:9/none", data_dir=settings.data_dir
    )
    app = create_app(dead, database=Database(make_engine(dead.database_url, dead, pool_size=1)))
    with TestClient(app, raise_server_exceptions=False) as client:
        body = Contracts(client).problem("GET", "/healthz", client.get("/healthz"))
    assert body["status"] == 503 and body["type"] == "/problems/database-unavailable"


# ----------------------------------------------------------------- the document
@pytest.fixture
def spec(settings: Settings, db: BoundDatabase) -> dict[str, Any]:
    """``/api`` of a fresh app, built with warnings recorded (there must be none)."""
    app = create_app(settings, database=db)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        document = app.openapi()
    assert not [str(w.message) for w in caught if "Operation ID" in str(w.message)]
    return document


@pytest.mark.parametrize(
    ("method", "path", "status", "model", "media"),
    CONTRACTS,
    ids=[f"{method} {path} {status}" for method, path, status, _, _ in CONTRACTS],
)
def test_api_documents_each_answer(
    spec: dict[str, Any], method: str, path: str, status: int, model: type[BaseModel], media: str
) -> None:
    name = _api_schema(spec, method, path, str(status), media)
    assert name == model.__name__
    component = spec["components"]["schemas"][name]
    members = {field.alias or key for key, field in model.model_fields.items()}
    assert set(component["properties"]) == members
    closed = model.model_config.get("extra") == "forbid"
    assert component.get("additionalProperties") is (not closed)


def test_api_documents_problems_everywhere(spec: dict[str, Any]) -> None:
    problem = spec["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail"} <= set(problem["required"])
    assert problem["additionalProperties"] is True
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert {"4XX", "5XX"} <= responses.keys(), (method, path)
            for status, response in responses.items():
                if status[0] in "45":
                    schema = response["content"][PROBLEM_JSON]["schema"]
                    assert _ref_name(schema) == "Problem", (method, path, status)
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_api_is_valid_openapi_30(spec: dict[str, Any]) -> None:
    ogctests = pytest.importorskip("ogctests")
    yaml = pytest.importorskip("yaml")
    from openapi_schema_validator import OAS30Validator, validate

    assert spec["openapi"] == "3.0.3"
    text_ = (
        Path(ogctests.__file__).parent / "features/schemas/openapi_schema_v3.0.yaml"
    ).read_text()
    validate(spec, yaml.safe_load(text_), cls=OAS30Validator)
    dumped = json.dumps(spec)
    assert '"type": "null"' not in dumped and '"const"' not in dumped
    operation_ids = [
        operation["operationId"] for item in spec["paths"].values() for operation in item.values()
    ]
    assert len(operation_ids) == len(set(operation_ids))


def test_models_follow_the_code() -> None:
    """Vocabularies the models repeat are the registry's."""
    assert set(Household.model_fields) == {"id"} | {p.name for p in HOUSEHOLD_PROPERTIES}
    options = get_args(Household.model_fields["tenure"].annotation)
    tenure = next(option for option in options if option is not type(None))
    assert get_args(tenure) == ENUMS["tenure"]
    assert set(BASIS) <= set(SettlementSummary.model_fields)
