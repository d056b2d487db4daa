"""``Idempotency-Key`` bookkeeping for retried uploads and creates.

A key is claimed in the same transaction as the write it protects and the
response is stored before commit, so either both land or neither does:

* first request: :func:`claim` returns ``None``; the caller writes, then calls
  :func:`complete` with the response it is about to send;
* a retry with the same key and the same request: :func:`claim` returns the
  stored :class:`StoredResponse` to send again;
* the same key with a different request: :class:`KeyReused` (a 422);
* an empty or over-long key: :class:`~geo.core.errors.BadRequest` (:func:`check_key`);
* a retry while the first is still running waits on the key's row lock until
  the first commits (then replays) or rolls back (then proceeds itself).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from sqlalchemy import Connection, text

from geo.core.errors import BadRequest, InvalidInput

__all__ = [
    "MAX_KEY_LENGTH",
    "KeyReused",
    "StoredResponse",
    "check_key",
    "claim",
    "complete",
    "request_hash",
]

MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class StoredResponse:
    """The response first sent for a key."""

    status: int
    headers: dict[str, str]
    body: bytes


class KeyReused(InvalidInput):
    """The key was used before for a different request (422)."""

    slug = "idempotency-key-reused"

    def __init__(self, key: str) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was already used for a different request; "
            "use a new key for new content"
        )
        self.key = key


def check_key(key: str) -> str:
    """``key`` when it is 1 to :data:`MAX_KEY_LENGTH` characters, else a 400.

    >>> check_key("upload-7")
    'upload-7'
    """
    if not key or len(key) > MAX_KEY_LENGTH:
        raise BadRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters", slug="invalid-request"
        )
    return key


def request_hash(*parts: bytes | str) -> str:
    """SHA-256 over the parts that make two requests "the same"."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def claim(
    conn: Connection, *, principal: str, key: str, scope: str, fingerprint: str
) -> StoredResponse | None:
    """Claim ``key`` for this request, or return the response stored for it.

    Parameters
    ----------
    principal
        Who sends the request: keys are per user.
    key
        The client's ``Idempotency-Key`` (1 to 255 characters).
    scope
        What the key is used for, e.g. ``POST /traces``.
    fingerprint
        :func:`request_hash` of the request body and parameters.

    Raises
    ------
    BadRequest
        For an empty or over-long key.
    KeyReused
        When the key belongs to a different request.
    """
    check_key(key)
    inserted = conn.execute(
        text(
            "INSERT INTO idempotency_keys (principal, key, scope, request_sha256) "
            "VALUES (:p, :k, :s, :h) ON CONFLICT DO NOTHING RETURNING 1"
        ),
        {"p": principal, "k": key, "s": scope, "h": fingerprint},
    ).first()
    if inserted is not None:
        return None
    row = conn.execute(
        text(
            "SELECT scope, request_sha256, status, headers, body FROM idempotency_keys "
            "WHERE principal = :p AND key = :k"
        ),
        {"p": principal, "k": key},
    ).one()
    if row.scope != scope or row.request_sha256 != fingerprint or row.status is None:
        raise KeyReused(key)
    return StoredResponse(status=row.status, headers=dict(row.headers or {}), body=bytes(row.body))


def complete(
    conn: Connection,
    *,
    principal: str,
    key: str,
    status: int,
    body: bytes | dict[str, object],
    headers: dict[str, str] | None = None,
) -> None:
    """Store the response for a claimed key (same transaction as the write)."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.execute(
        text(
            "UPDATE idempotency_keys SET status = :st, headers = CAST(:h AS jsonb), body = :b, "
            "completed_at = now() WHERE principal = :p AND key = :k"
        ),
        {
            "st": status,
            "h": json.dumps(headers or {}),
            "b": payload,
            "p": principal,
            "k": key,
        },
    )
