"""Absolute links and content negotiation helpers shared by routers."""

from __future__ import annotations

from fastapi import Request

__all__ = ["href", "wants_html"]


def href(request: Request, path: str, **query: str | int | None) -> str:
    """Absolute URL of ``path`` on this server, with ``query`` encoded (None values left out).

    Built on the request's base URL (so a proxy's root path and headers are
    honoured) with Starlette's URL helpers, which percent-encode every value:
    an ``owner`` of ``a&b`` stays one parameter.
    """
    base = request.base_url
    url = base.replace(path=base.path.rstrip("/") + path)
    params = {key: value for key, value in query.items() if value is not None}
    return str(url.include_query_params(**params)) if params else str(url)


def wants_html(request: Request) -> bool:
    """True when ``f=html`` or a browser's Accept prefers HTML over JSON."""
    fmt = request.query_params.get("f")
    if fmt:
        return fmt.lower() == "html"
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "json" not in accept.split(",")[0]
