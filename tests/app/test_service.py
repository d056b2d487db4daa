"""Landing page, conformance, OpenAPI, health and the problem+json shape."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.testclient import TestClient

from app.main import create_app
from geo.core.db import Database, make_engine
from geo.core.settings import Settings
from tests.support.db import BoundDatabase


def assert_problem(response, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    for member in ("type", "title", "status", "detail"):
        assert member in body, body
    assert body["status"] == status
    assert "Traceback" not in response.text
    return body


def test_healthz_ok(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_healthz_503_when_database_unreachable(settings: Settings) -> None:
    dead = Settings(
        database_url="postgresql://nobody:x@127.0.0.1:9/none", data_dir=settings.data_dir
    )
    database = Database(make_engine(dead.database_url, dead, pool_size=1))
    app = create_app(dead, database=database)
    with TestClient(app, raise_server_exceptions=False) as client:
        body = assert_problem(client.get("/healthz"), 503)
    assert "unreachable" in body["detail"]


def test_landing_page_json_links(client: TestClient) -> None:
    body = client.get("/", headers={"Accept": "application/json"}).json()
    rels = {link["rel"] for link in body["links"]}
    assert {"self", "service-desc", "service-doc", "conformance", "data"} <= rels
    assert client.get("/?f=json").json()["title"] == "Makazi"


def test_landing_page_html_for_browsers(client: TestClient) -> None:
    response = client.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert response.headers["content-type"].startswith("text/html")
    assert "href='/map'" in response.text or 'href="/map"' in response.text
    assert "href='/field'" in response.text  # a mapper on a phone finds the field app


def test_openapi_and_docs(client: TestClient) -> None:
    spec = client.get("/api").json()
    assert spec["openapi"].startswith("3.")
    assert "/healthz" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_conformance_lists_core(client: TestClient) -> None:
    classes = client.get("/conformance").json()["conformsTo"]
    assert "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/core" in classes


def test_404_is_problem(client: TestClient) -> None:
    body = assert_problem(client.get("/no/such/thing"), 404)
    assert "/no/such/thing" in body["detail"]


def test_405_is_problem(client: TestClient) -> None:
    body = assert_problem(client.delete("/conformance"), 405)
    assert "DELETE" in body["detail"]


def test_request_validation_is_problem(settings: Settings, db: BoundDatabase) -> None:
    app = create_app(settings, database=db)
    router = APIRouter()

    @router.get("/echo")
    def echo(n: int) -> dict[str, int]:
        return {"n": n}

    app.include_router(router)
    with TestClient(app, raise_server_exceptions=False) as client:
        body = assert_problem(client.get("/echo?n=abc"), 400)
    assert body["errors"][0]["field"] == "query.n"


def test_unexpected_error_is_500_without_internals(settings: Settings, db: BoundDatabase) -> None:
    app = create_app(settings, database=db)
    router = APIRouter()

    @router.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internal detail")

    app.include_router(router)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom", headers={"X-Request-ID": "abc123"})
    body = assert_problem(response, 500)
    assert "secret" not in response.text
    assert body["request_id"] == "abc123"
    assert response.headers["x-request-id"] == "abc123"
