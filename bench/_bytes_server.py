"""An ASGI app that answers ``GET /?bytes=N`` with N prebuilt bytes: the HTTP floor for a body.

``bench.pages`` serves it with the same uvicorn as Makazi, so the cost of sending a
page's bytes over HTTP, with no routing, database or JSON, is measured beside the page.
"""

from __future__ import annotations

from functools import cache
from typing import Any
from urllib.parse import parse_qs


@cache
def _body(size: int) -> bytes:
    return b"x" * size


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer with as many bytes as ``?bytes=`` asks (none by default)."""
    query = parse_qs(scope.get("query_string", b"").decode())
    body = _body(int(query.get("bytes", ["0"])[0]))
    headers = [(b"content-type", b"application/geo+json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
