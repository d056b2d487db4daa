"""API tokens and roles.

Tokens are random strings shown once; only their SHA-256 is stored (a token
carries 192 bits of entropy, so a fast hash is the right tool here).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import Connection, func, insert, or_, select, text, update

from geo.core.tables import api_tokens

__all__ = ["ROLES", "Principal", "create_token", "hash_token", "principal_for", "role_at_least"]

ROLES: tuple[str, ...] = ("viewer", "mapper", "enumerator", "planner", "admin")
TOKEN_PREFIX = "mkz_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name (the user) and role."""

    name: str
    role: str
    token_id: int

    def at_least(self, role: str) -> bool:
        """Whether this principal's role includes ``role``."""
        return role_at_least(self.role, role)


def role_at_least(have: str, need: str) -> bool:
    """Whether role ``have`` includes role ``need``.

    >>> role_at_least("planner", "mapper"), role_at_least("viewer", "mapper")
    (True, False)
    """
    return ROLES.index(have) >= ROLES.index(need)


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(conn: Connection, *, name: str, role: str) -> str:
    """Create a token for ``name`` with ``role`` and return it (shown only once)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    if not name.strip():
        raise ValueError("a token needs a non-empty name")
    token = TOKEN_PREFIX + secrets.token_urlsafe(24)
    conn.execute(
        insert(api_tokens).values(name=name.strip(), role=role, token_hash=hash_token(token))
    )
    return token


def principal_for(conn: Connection, token: str) -> Principal | None:
    """The principal a presented token belongs to, or None if unknown or revoked."""
    if not token or len(token) > 200:
        return None
    row = conn.execute(
        select(
            api_tokens.c.id, api_tokens.c.name, api_tokens.c.role, api_tokens.c.last_used_at
        ).where(api_tokens.c.token_hash == hash_token(token), api_tokens.c.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    # Record use at most every few minutes: reads should not write on every request.
    conn.execute(
        update(api_tokens)
        .where(
            api_tokens.c.id == row.id,
            or_(
                api_tokens.c.last_used_at.is_(None),
                api_tokens.c.last_used_at < func.now() - text("interval '5 minutes'"),
            ),
        )
        .values(last_used_at=func.now())
    )
    return Principal(name=row.name, role=row.role, token_id=row.id)
