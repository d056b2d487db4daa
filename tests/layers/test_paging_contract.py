"""The page size clients may ask for is declared where GIS clients look for it.

Recent GDAL releases (the OAPIF driver) look ``/collections/<name>/items`` up
literally in ``/api``, follow its ``limit`` parameter's ``$ref`` and page at
``min(max(1000, default), maximum)``; without them they ask for 10 features a
page (2,000 requests for 20,000 structures).  Debian 12's GDAL 3.6 predates
this, so the test checks the document as those releases read it.
"""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from app.main import create_app
from geo.core.settings import Settings
from geo.layers.registry import COLLECTIONS
from tests.support.db import BoundDatabase

GDAL_PAGE_SIZE = 1000


def _limit_as_gdal_reads_it(api: dict[str, Any], collection: str) -> dict[str, Any]:
    parameters = api["paths"][f"/collections/{collection}/items"]["get"]["parameters"]
    refs = [p["$ref"] for p in parameters if "limit" in p.get("$ref", "")]
    assert len(refs) == 1, parameters
    node: Any = api
    for part in refs[0].removeprefix("#/").split("/"):
        node = node[part]
    return dict(node)


def test_every_collection_declares_its_page_limits(client: TestClient) -> None:
    api = client.get("/api").json()
    for name in COLLECTIONS:
        limit = _limit_as_gdal_reads_it(api, name)
        assert limit["in"] == "query" and limit["name"] == "limit"
        assert limit["schema"]["default"] == 100 and limit["schema"]["maximum"] == 10_000
        page = min(max(GDAL_PAGE_SIZE, limit["schema"]["default"]), limit["schema"]["maximum"])
        assert page == GDAL_PAGE_SIZE
    # the templated path and /traces share the one parameter
    templated = api["paths"]["/collections/{collection_id}/items"]["get"]["parameters"]
    assert {"$ref": "#/components/parameters/limit"} in templated
    assert {"$ref": "#/components/parameters/limit"} in api["paths"]["/traces"]["get"]["parameters"]
    operation_ids = [
        operation["operationId"]
        for item in api["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict) and "operationId" in operation
    ]
    assert len(operation_ids) == len(set(operation_ids))


def test_declared_limits_follow_the_settings(settings: Settings, db: BoundDatabase) -> None:
    small = settings.model_copy(update={"items_default_limit": 20, "items_max_limit": 500})
    with TestClient(create_app(small, database=db)) as client:
        limit = _limit_as_gdal_reads_it(client.get("/api").json(), "structures")
        assert limit["schema"]["default"] == 20 and limit["schema"]["maximum"] == 500
        # a larger limit is clamped, never refused
        page = client.get("/collections/structures/items", params={"limit": 100_000})
        assert page.status_code == 200
