"""``Idempotency-Key`` for POST handlers: one helper for features, households and traces.

A handler takes :data:`IdempotencyKey` (checked before the body is read), then
inside its write transaction calls :func:`replay_or_claim` and, with the
response it is about to send, :func:`remember`: either both the write and the
stored response commit, or neither does.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header
from fastapi.responses import Response
from sqlalchemy import Connection

from geo.core.idempotency import check_key, claim, complete

__all__ = ["IdempotencyKey", "remember", "replay_or_claim"]

_KEPT_HEADERS = ("location", "etag", "content-crs", "content-type")


async def _key(idempotency_key: Annotated[str | None, Header()] = None) -> str | None:
    return None if idempotency_key is None else check_key(idempotency_key)


IdempotencyKey = Annotated[str | None, Depends(_key)]
"""The request's ``Idempotency-Key`` (400 when empty or longer than 255 characters)."""


def replay_or_claim(
    conn: Connection, *, principal: str, key: str | None, scope: str, fingerprint: str
) -> Response | None:
    """The stored response for a retried request, or None (after claiming ``key``).

    Without a key there is nothing to claim.  A replayed response carries
    ``Idempotent-Replayed: true``.

    Raises
    ------
    KeyReused
        422 when the key was used for a different request.
    """
    if key is None:
        return None
    stored = claim(conn, principal=principal, key=key, scope=scope, fingerprint=fingerprint)
    if stored is None:
        return None
    headers = {**stored.headers, "Idempotent-Replayed": "true"}
    return Response(stored.body, status_code=stored.status, headers=headers)


def remember(conn: Connection, *, principal: str, key: str | None, response: Response) -> None:
    """Store ``response`` for ``key`` in the same transaction as the write (no key: nothing)."""
    if key is None:
        return
    headers = {k: v for k, v in response.headers.items() if k.lower() in _KEPT_HEADERS}
    complete(
        conn,
        principal=principal,
        key=key,
        status=response.status_code,
        body=bytes(response.body),
        headers=headers,
    )
