"""Errors as ``application/problem+json`` (RFC 9457): the one place that answers them.

Domain errors carry their own status (:mod:`geo.core.errors`); this module turns
them, FastAPI's validation errors, Starlette's HTTP errors and database errors
into problem documents, and never leaks internals.  Bad input is always a 4xx
that names what is wrong.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from geo.core.errors import BadRequest, InvalidInput, MakaziError, NotFound, Unavailable
from geo.core.uploads import no_space, out_of_space

log = logging.getLogger("makazi.http")

PROBLEM_JSON = "application/problem+json"
DATABASE_DOWN = Unavailable(
    "the database is unavailable; retry shortly", slug="database-unavailable"
)


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    request: Request | None = None,
    **extra: Any,
) -> JSONResponse:
    """Build a problem+json response."""
    body: dict[str, Any] = {
        "type": f"/problems/{slug}" if slug else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if request is not None:
        body["instance"] = request.url.path
        request_id = getattr(request.state, "request_id", None)
        if request_id:
            body["request_id"] = request_id
            headers = {**(headers or {}), "X-Request-ID": request_id}
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(part) for part in loc if part not in ("body",)]
    return ".".join(parts) if parts else "request"


def validation_errors(raw: Sequence[Any]) -> tuple[str, list[dict[str, str]]]:
    """Pydantic/FastAPI validation errors as ``(summary, [{field, reason}])``."""
    errors = [
        {"field": _location(error.get("loc", ())), "reason": str(error.get("msg", "invalid"))}
        for error in raw
    ]
    summary = "; ".join(f"{e['field']}: {e['reason']}" for e in errors[:5])
    return summary or "invalid request", errors


async def _on_domain(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MakaziError)
    return problem_for(exc, request)


def problem_for(exc: MakaziError, request: Request | None = None) -> JSONResponse:
    """The problem+json answer to a domain error: its class's status, slug and headers."""
    extra = {key: value for key, value in exc.extra.items() if value is not None}
    return problem_response(
        exc.status, exc.detail, slug=exc.slug, headers=exc.headers, request=request, **extra
    )


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no resource at {request.url.path}"
    if exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return problem_response(
        exc.status_code, detail, headers=dict(exc.headers or {}), request=request
    )


_OUT_OF_RANGE = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


async def _on_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    summary, errors = validation_errors(exc.errors())
    if exc.errors() and all(
        str(e.get("loc", [""])[0]) == "path" and e.get("type") in _OUT_OF_RANGE
        for e in exc.errors()
    ):
        # an id no resource can have (0, or past 2**62) is as absent as any other
        return problem_for(NotFound(f"no resource at {request.url.path} ({summary})"), request)
    in_query = all(str(e.get("loc", [""])[0]) == "query" for e in exc.errors())
    kind = BadRequest if in_query else InvalidInput
    return problem_for(kind(summary, slug="invalid-request", errors=errors), request)


_UNPROJECTABLE = ("transform:", "Antipodal")
"""How PostGIS's errors about coordinates a projection or a geodesic cannot take begin."""


async def on_database(request: Request, exc: Exception) -> Response:
    """The problem for a database error: 503 when the database is unreachable or slow."""
    assert isinstance(exc, DBAPIError)
    import psycopg.errors as pg

    orig = exc.orig
    if isinstance(orig, pg.QueryCanceled):
        timeout = Unavailable(
            "the query took longer than the statement timeout; narrow it and retry", slug="timeout"
        )
        return problem_for(timeout, request)
    if isinstance(orig, pg.InternalError) and str(orig).startswith(_UNPROJECTABLE):
        # PostGIS/PROJ: coordinates from the request that a CRS cannot take (a bbox-crs
        # box far outside its zone, a Content-Crs geometry, a crs the data cannot go to)
        message = str(orig).strip().splitlines()[0]
        unprojectable = BadRequest(f"the coordinates cannot be transformed: {message}")
        return problem_for(unprojectable, request)
    if isinstance(orig, pg.DataError):
        # SQLSTATE class 22: a value from the request does not fit its column or type
        message = str(orig).strip().splitlines()[0] if str(orig).strip() else "invalid value"
        invalid = BadRequest(f"a value in the request is not valid here: {message}")
        return problem_for(invalid, request)
    if isinstance(exc, OperationalError) or exc.connection_invalidated:
        log.warning("database unavailable: %s", str(orig).splitlines()[0] if orig else exc)
        return problem_for(DATABASE_DOWN, request)
    return await _on_unexpected(request, exc)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    if no_space(exc):
        log.error("no space left on device while answering %s %s", request.method, request.url)
        return problem_for(out_of_space(), request)
    request_id = getattr(request.state, "request_id", "-")
    log.error(
        "unhandled error in request %s %s [%s]",
        request.method,
        request.url.path,
        request_id,
        exc_info=exc,
    )
    return problem_response(
        500,
        f"an unexpected error occurred; quote request id {request_id} when reporting it",
        request=request,
    )


def install(app: FastAPI) -> None:
    """Register the error handlers and the request-id middleware on ``app``."""
    app.add_exception_handler(MakaziError, _on_domain)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(DBAPIError, on_database)
    app.add_exception_handler(Exception, _on_unexpected)

    app.add_middleware(RequestIdMiddleware)


class RequestIdMiddleware:
    """Give every request an id (``X-Request-ID``), echoed in the response and in logs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
        rid = incoming if incoming.isalnum() and len(incoming) <= 64 else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name == b"x-request-id" for name, _ in headers):
                    headers.append((b"x-request-id", rid.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)
