"""``HEAD`` on every ``GET`` resource: the ``GET`` answer's status and headers, no body.

A pure ASGI middleware. FastAPI routes declared for ``GET`` answer ``HEAD``
with 405; HTTP (RFC 9110, 9.3.2) wants the headers ``GET`` would send, so a
client can read an ``ETag``, ``Content-Type`` or ``Content-Length`` without the
body. The request goes on as a ``GET`` and the body is dropped on the way out.
An endpoint whose body is costly to make before the first byte (a whole-layer
export) asks `is_head` and answers with its headers alone.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HeadAsGet", "is_head"]

HEAD_KEY = "makazi.head"
"""The scope key that marks a ``HEAD`` request passed on as a ``GET``."""


def is_head(request: Request) -> bool:
    """True when ``request`` arrived as ``HEAD``: only the headers will be sent."""
    return bool(request.scope.get(HEAD_KEY, False))


class HeadAsGet:
    """Answers ``HEAD`` as ``GET`` without the body; see the module doc."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET", HEAD_KEY: True}, receive, headers_only)
