"""``Idempotency-Key`` for POST handlers: one helper for features, households and traces.

A handler takes :data:`IdempotencyKey` (checked before the body is read) and
hands its write to :func:`idempotent_write`, which runs it in one transaction
between :func:`replay_or_claim` and :func:`remember`: either both the write and
the stored response commit, or neither does, and a retry gets the stored answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Header
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy import Connection

from geo.core.db import Database
from geo.core.idempotency import check_key, claim, complete

__all__ = ["IdempotencyKey", "idempotent_write", "remember", "replay_or_claim"]

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


async def idempotent_write(
    db: Database,
    *,
    actor: str,
    key: str | None,
    scope: str,
    fingerprint: str,
    write: Callable[[Connection], Response],
    defer_actor: bool = False,
) -> Response:
    """Run ``write`` once per ``key``: in a thread, in one transaction named for ``actor``.

    Parameters
    ----------
    actor
        Who writes (the history's ``changed_by``; keys are per actor).
    key
        The request's ``Idempotency-Key``, or None for a plain write.
    scope, fingerprint
        What the key is for (``POST /traces``) and what makes a retry "the same
        request" (:func:`geo.core.idempotency.request_hash` of its content).
    write
        Does the work on the connection and builds the response to send.
    defer_actor
        Name the actor with the transaction's first statement
        (:meth:`geo.core.db.Database.begin`), for a ``write`` that sends it itself.
    """

    def work() -> Response:
        with db.begin(actor=actor, defer_actor=defer_actor) as conn:
            replay = replay_or_claim(
                conn, principal=actor, key=key, scope=scope, fingerprint=fingerprint
            )
            if replay is not None:
                return replay
            response = write(conn)
            remember(conn, principal=actor, key=key, response=response)
            return response

    return await run_in_threadpool(work)
