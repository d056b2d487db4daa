"""``Idempotency-Key`` for POST handlers: replay a stored response or remember a new one."""

from __future__ import annotations

from fastapi.responses import Response
from sqlalchemy import Connection

from geo.errors import InvalidInput
from geo.idempotency import KeyReused, claim, complete

__all__ = ["replay_or_claim", "remember"]

_KEPT_HEADERS = ("location", "etag", "content-crs", "content-type")


def replay_or_claim(
    conn: Connection, *, principal: str, key: str, scope: str, fingerprint: str
) -> Response | None:
    """The stored response for a retried request, or None after claiming ``key``.

    Raises
    ------
    InvalidInput
        422 when the key was used for a different request, 400 for a malformed key.
    """
    try:
        stored = claim(conn, principal=principal, key=key, scope=scope, fingerprint=fingerprint)
    except KeyReused as exc:
        raise InvalidInput(str(exc)) from exc
    except ValueError as exc:
        raise InvalidInput(str(exc), status=400) from exc
    if stored is None:
        return None
    return Response(stored.body, status_code=stored.status, headers=stored.headers)


def remember(conn: Connection, *, principal: str, key: str, response: Response) -> None:
    """Store ``response`` for ``key`` in the same transaction as the write."""
    headers = {k: v for k, v in response.headers.items() if k.lower() in _KEPT_HEADERS}
    complete(
        conn,
        principal=principal,
        key=key,
        status=response.status_code,
        body=bytes(response.body),
        headers=headers,
    )
