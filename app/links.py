"""Absolute links and content negotiation helpers shared by routers."""

from __future__ import annotations

from fastapi import Request

__all__ = ["href", "wants_html"]


def href(request: Request, path: str, **query: str | int | None) -> str:
    """Absolute URL of ``path`` on this server (honours proxy headers)."""
    base = str(request.base_url).rstrip("/")
    url = base + path
    params = "&".join(f"{key}={value}" for key, value in query.items() if value is not None)
    return f"{url}?{params}" if params else url


def wants_html(request: Request) -> bool:
    """True when ``f=html`` or a browser's Accept prefers HTML over JSON."""
    fmt = request.query_params.get("f")
    if fmt:
        return fmt.lower() == "html"
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "json" not in accept.split(",")[0]
