"""Per-request read routing: a :class:`~geo.core.replicas.Route` for every request, and
one more try on the primary for a GET whose replica went away.

The route starts here (whether the request writes) and the caller's token is added
by :func:`app.deps.optional_user`; :meth:`geo.core.db.Database.read` follows it.
When a replica is lost in the middle of a GET or HEAD and the answer has not
started, the 503 it produced is dropped and the request runs again on the
primary, so stopping a replica costs no request.  A response already streaming
cannot be taken back.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from geo.core.replicas import ROUTE, Route

__all__ = ["ReadRouting"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ReadRouting:
    """ASGI middleware that gives each HTTP request its read route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        route = Route(writes=method not in SAFE_METHODS)
        token = ROUTE.set(route)
        try:
            if method not in ("GET", "HEAD"):
                await self.app(scope, receive, send)
                return
            dropped = await self._once(scope, receive, send, route)
            if dropped:
                route.primary, route.lost = True, False
                await self.app(scope, _replay(receive), send)
        finally:
            ROUTE.reset(token)

    async def _once(self, scope: Scope, receive: Receive, send: Send, route: Route) -> bool:
        """Run the request; True when its answer was dropped for a retry on the primary."""
        dropping = False

        async def held(message: Message) -> None:
            nonlocal dropping
            if message["type"] == "http.response.start" and route.lost:
                dropping = True
            if not dropping:
                await send(message)

        await self.app(scope, receive, held)
        return dropping


def _replay(receive: Receive) -> Receive:
    """A ``receive`` for the second run of a bodiless request."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return await receive()

    return again
