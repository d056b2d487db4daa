"""Service-level routes: health, the OGC landing page and the conformance list."""

from __future__ import annotations

import html
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy import text

from app.deps import DbDep
from app.links import href, wants_html
from geo.core.documents import Health
from geo.core.errors import Unavailable
from geo.layers.documents import Conformance, LandingPage

router = APIRouter(tags=["service"])

CORE_CONFORMANCE = (
    "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/landing-page",
    "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/json",
    "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/html",
    "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/oas30",
)


@router.get(
    "/healthz",
    summary="Liveness and database check",
    responses={200: {"model": Health, "description": "The database answers"}},
)
def healthz(db: DbDep, request: Request) -> Response:
    """``{"status": "ok"}`` when the database answers; 503 problem otherwise."""
    try:
        with db.read() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise Unavailable("the database is unreachable", slug="database-unavailable") from exc
    return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})


def _landing_links(request: Request) -> list[dict[str, str]]:
    return [
        {
            "href": href(request, "/", f="json"),
            "rel": "self",
            "type": "application/json",
            "title": "This document",
        },
        {
            "href": href(request, "/", f="html"),
            "rel": "alternate",
            "type": "text/html",
            "title": "This document as HTML",
        },
        {
            "href": href(request, "/api"),
            "rel": "service-desc",
            "type": "application/vnd.oai.openapi+json;version=3.0",
            "title": "OpenAPI definition",
        },
        {
            "href": href(request, "/docs"),
            "rel": "service-doc",
            "type": "text/html",
            "title": "API documentation",
        },
        {
            "href": href(request, "/conformance"),
            "rel": "conformance",
            "type": "application/json",
            "title": "Conformance classes",
        },
        {
            "href": href(request, "/collections"),
            "rel": "data",
            "type": "application/json",
            "title": "Collections",
        },
        {
            "href": href(request, "/map"),
            "rel": "alternate",
            "type": "text/html",
            "title": "Web map",
        },
    ]


@router.get(
    "/",
    summary="Landing page (OGC API)",
    responses={
        200: {
            "model": LandingPage,
            "description": "The landing page (HTML for browsers and with f=html)",
            "content": {"text/html": {"schema": {"type": "string"}}},
        }
    },
)
def landing(request: Request) -> Response:
    """Links to the API definition, conformance, collections and the map."""
    links = _landing_links(request)
    body: dict[str, Any] = {
        "title": "Makazi",
        "description": "Community maps of informal settlements: boundaries, structures, "
        "facilities and GPS traces (OGC API - Features, vector tiles, analyses).",
        "links": links,
    }
    if wants_html(request):
        items = "".join(
            f'<li><a href="{html.escape(link["href"])}">{html.escape(link["title"])}</a>'
            f" <small>({html.escape(link['rel'])})</small></li>"
            for link in links
        )
        page = (
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            "<title>Makazi</title></head><body style='font-family:sans-serif;max-width:50em;"
            "margin:2em auto;padding:0 1em'>"
            f"<h1>Makazi</h1><p>{html.escape(body['description'])}</p>"
            "<p><a href='/map'><strong>Open the web map</strong></a> &middot; "
            "<a href='/field'><strong>Open the field app</strong></a> (for mappers' phones)</p>"
            f"<ul>{items}</ul></body></html>"
        )
        return HTMLResponse(page)
    return JSONResponse(body)


@router.get(
    "/conformance",
    summary="Conformance classes this server implements",
    response_model=None,
    responses={200: {"model": Conformance, "description": "The conformance classes"}},
)
def conformance(request: Request) -> JSONResponse:
    """Every conformance class the included routers implement."""
    classes: list[str] = request.app.state.conformance
    return JSONResponse({"conformsTo": sorted(set(classes))})
