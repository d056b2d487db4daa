"""Per-request read routing: a :class:`~geo.core.replicas.Route` for every request, and
answers that are whole or not sent at all.

The route starts here (whether the request writes) and the caller's token is added
by :func:`app.deps.optional_user`; :meth:`geo.core.db.Database.read` follows it.

A GET or HEAD answer is bounded (an item page, a tile, a summary, an analysis):
it is built whole before its first byte goes out.  So when the server it was read
from goes away midway, nothing has been sent yet and

* a replica lost during the read (the route is marked ``lost``): the request runs
  again on the primary, and the client gets the whole answer;
* another database failure (the primary itself going away, a failover): the client
  gets a 503 problem (``database-unavailable``), never a cut-off 200.

Long streams (exports) say so with :func:`long_stream`; they pass through as they
are produced and recover by themselves (:mod:`geo.exports.resume`).  Memory stays
bounded: an answer that grows past ``max_held_bytes`` (``MAKAZI_HELD_ANSWER_MAX_MB``)
is sent on as it comes, like a long stream, and loses the retry.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.problems import on_database
from geo.core.replicas import ROUTE, Route

__all__ = ["ReadRouting", "long_stream"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def long_stream() -> None:
    """The current request's answer is a long stream: send it as it is produced."""
    route = ROUTE.get()
    if route is not None:
        route.long_stream = True


class ReadRouting:
    """ASGI middleware that gives each HTTP request its read route."""

    def __init__(self, app: ASGIApp, max_held_bytes: int = 16 * 2**20) -> None:
        self.app = app
        self.max_held_bytes = max_held_bytes

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
            if await self._whole(scope, receive, send, route):
                route.primary, route.lost, route.long_stream = True, False, False
                await self._whole(scope, _replay(receive), send, route)
        finally:
            ROUTE.reset(token)

    async def _whole(self, scope: Scope, receive: Receive, send: Send, route: Route) -> bool:
        """Run the request, sending its answer only once complete (unless a long stream).

        True when nothing was sent and a replica was lost: run it again on the primary.
        """
        held: list[Message] = []
        held_bytes = 0
        sending = False

        async def hold(message: Message) -> None:
            nonlocal sending, held_bytes
            if sending:
                await send(message)
                return
            held.append(message)
            held_bytes += len(message.get("body", b""))
            start = message["type"] == "http.response.start"
            last = not (start or message.get("more_body", False))
            if last and route.lost and not route.primary:
                # made after its replica was lost (e.g. a 503 the endpoint chose): not sent,
                # the request runs again on the primary
                return
            if (start and route.long_stream) or last or held_bytes > self.max_held_bytes:
                sending = True
                for kept in _joined(held):
                    await send(kept)
                held.clear()

        try:
            await self.app(scope, receive, hold)
        except Exception as exc:
            if sending:
                raise
            if route.lost and not route.primary:
                return True
            if not isinstance(exc, DBAPIError):
                raise
            response = await on_database(Request(scope), exc)
            await response(scope, receive, send)
            return False
        return not sending and route.lost and not route.primary


def _joined(messages: list[Message]) -> list[Message]:
    """The start message and the bodies held so far as one body message."""
    if len(messages) <= 2:
        return messages
    start, bodies = messages[0], messages[1:]
    body = b"".join(m.get("body", b"") for m in bodies)
    more = bool(bodies[-1].get("more_body", False))
    return [start, {"type": "http.response.body", "body": body, "more_body": more}]


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
