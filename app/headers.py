"""Security headers on every response, and a content security policy on HTML pages.

A pure ASGI middleware (it only adds headers to ``http.response.start``), so
streamed bodies stream as before. Every response gets
``X-Content-Type-Options: nosniff``; HTML pages (``/``, ``/map``, ``/docs``)
also get a policy that lets them load only what this server serves (plus the
opt-in OpenStreetMap basemap's tiles), no framing by other sites, and a
``Referrer-Policy`` that keeps URLs at home. A page that carries its own
``Content-Security-Policy`` (``/docs``, whose inline start-up script is
allowed by its hash) keeps it.
"""

from __future__ import annotations

import base64
import hashlib

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["SecurityHeaders", "content_security_policy", "script_hash"]

# MapLibre draws with workers made from blob: URLs and sets inline styles on its
# elements; the raster basemap is the one other host a page may reach (opt-in).
BASEMAP = "https://tile.openstreetmap.org"


def content_security_policy(*script_sources: str) -> str:
    """The policy of Makazi's pages; ``script_sources`` adds to ``script-src 'self'``."""
    scripts = " ".join(("'self'", *script_sources))
    return "; ".join(
        (
            "default-src 'self'",
            f"script-src {scripts}",
            "style-src 'self' 'unsafe-inline'",
            f"img-src 'self' data: blob: {BASEMAP}",
            f"connect-src 'self' {BASEMAP}",
            "worker-src 'self' blob:",
            "child-src 'self' blob:",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


def script_hash(source: str) -> str:
    """The CSP source expression allowing one inline script, ``'sha256-...'``."""
    digest = hashlib.sha256(source.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


class SecurityHeaders:
    """Adds the headers; see the module doc."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.policy = content_security_policy()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if headers.get("content-type", "").startswith("text/html"):
                    headers.setdefault("Content-Security-Policy", self.policy)
                    headers.setdefault("X-Frame-Options", "DENY")
                    headers.setdefault("Referrer-Policy", "same-origin")
            await send(message)

        await self.app(scope, receive, send_with_headers)
