"""Errors as ``application/problem+json`` (RFC 9457).

One table maps exceptions to statuses; handlers never leak internals.  Bad
input is always a 4xx that names what is wrong.
"""

from __future__ import annotations

import logging
import uuid
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from geo.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    MakaziError,
    NotFound,
    PreconditionFailed,
    PreconditionRequired,
    TooLarge,
)

log = logging.getLogger("makazi.http")

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """An error that becomes a problem+json response.

    Parameters
    ----------
    status
        HTTP status code.
    detail
        What went wrong, for a person: name the field, line or feature.
    slug
        Short machine-readable kind, used to build ``type`` (``/problems/<slug>``).
    headers
        Extra response headers (e.g. ``ETag`` on a 412).
    extra
        Extension members, e.g. ``errors`` for per-item failures.
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug
        self.title = title or HTTPStatus(status).phrase
        self.headers = headers or {}
        self.extra = extra


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


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(
        exc.status,
        exc.detail,
        slug=exc.slug,
        title=exc.title,
        headers=exc.headers,
        request=request,
        **exc.extra,
    )


_STATUS_OF: dict[type[MakaziError], int] = {
    NotFound: 404,
    Conflict: 409,
    PreconditionFailed: 412,
    PreconditionRequired: 428,
    Forbidden: 403,
    TooLarge: 413,
}


def status_of(exc: MakaziError) -> int:
    """The HTTP status of a domain error."""
    if isinstance(exc, InvalidInput):
        return exc.status
    for kind, status in _STATUS_OF.items():
        if isinstance(exc, kind):
            return status
    return 400


async def _on_domain(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MakaziError)
    headers = {}
    if isinstance(exc, PreconditionFailed) and exc.current_version is not None:
        headers["ETag"] = f'"{exc.current_version}"'
    extra = {key: value for key, value in exc.extra.items() if value is not None}
    return problem_response(
        status_of(exc), exc.detail, slug=exc.slug, headers=headers, request=request, **extra
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


async def _on_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for error in exc.errors():
        where = _location(error.get("loc", ()))
        errors.append({"field": where, "reason": str(error.get("msg", "invalid"))})
    summary = "; ".join(f"{e['field']}: {e['reason']}" for e in errors[:5])
    status = 400 if all(str(e.get("loc", [""])[0]) == "query" for e in exc.errors()) else 422
    return problem_response(
        status,
        summary or "invalid request",
        slug="invalid-request",
        request=request,
        errors=errors,
    )


async def _on_database(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DBAPIError)
    import psycopg.errors as pg

    orig = exc.orig
    if isinstance(orig, pg.QueryCanceled):
        return problem_response(
            503,
            "the query took longer than the statement timeout; narrow it and retry",
            slug="timeout",
            request=request,
            headers={"Retry-After": "5"},
        )
    if isinstance(orig, pg.DataError):
        # SQLSTATE class 22: a value from the request does not fit its column or type
        message = str(orig).strip().splitlines()[0] if str(orig).strip() else "invalid value"
        return problem_response(
            400,
            f"a value in the request is not valid here: {message}",
            slug="invalid-value",
            request=request,
        )
    if isinstance(exc, OperationalError) or exc.connection_invalidated:
        log.warning("database unavailable: %s", str(orig).splitlines()[0] if orig else exc)
        return problem_response(
            503,
            "the database is unavailable; retry shortly",
            slug="database-unavailable",
            request=request,
            headers={"Retry-After": "5"},
        )
    return await _on_unexpected(request, exc)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
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
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(MakaziError, _on_domain)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(DBAPIError, _on_database)
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
