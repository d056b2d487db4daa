"""API tokens and roles.

Tokens are random strings shown once; only their SHA-256 is stored (a token
carries 192 bits of entropy, so a fast hash is the right tool here).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, insert, or_, select, text, update

from geo.core.documents import TokenEntry
from geo.core.errors import Conflict, InvalidInput, NotFound
from geo.core.tables import api_tokens

__all__ = [
    "ROLES",
    "TOKENS_CHANNEL",
    "Principal",
    "create_token",
    "hash_token",
    "list_tokens",
    "principal_for",
    "revoke_token",
    "role_at_least",
]

TOKENS_CHANNEL = "makazi_tokens"
"""Where PostgreSQL announces a revoked token's name at commit (migration 0012)."""

ROLES: tuple[str, ...] = ("viewer", "mapper", "enumerator", "planner", "admin")
TOKEN_PREFIX = "mkz_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name (the user) and role."""

    name: str
    role: str
    token_id: int
    expires_at: datetime | None = None

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


def create_token(
    conn: Connection, *, name: str, role: str, expires_in_days: float | None = None
) -> str:
    """Create a token for ``name`` with ``role`` and return it (shown only once).

    ``expires_in_days`` (None: never) makes it stop working that long from now.

    Raises
    ------
    InvalidInput
        For an unknown role or an empty name.
    Conflict
        When a live token already has this name (revoke it first).
    """
    if role not in ROLES:
        raise InvalidInput(f"unknown role {role!r}; one of {', '.join(ROLES)}", field="role")
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidInput("a token needs a name of 1 to 200 characters", field="name")
    taken = conn.execute(
        select(api_tokens.c.id).where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))
    ).first()
    if taken is not None:
        raise Conflict(
            f"a live token is already called {name!r}; revoke it first or pick another name",
            field="name",
        )
    if expires_in_days is not None and not 0 < expires_in_days <= 36_500:
        raise InvalidInput(
            "expires_in_days must be more than 0 and at most 36500 days", field="expires_in_days"
        )
    expires = (
        None
        if expires_in_days is None
        else func.statement_timestamp()
        + func.make_interval(0, 0, 0, 0, 0, 0, expires_in_days * 86_400)
    )
    token = TOKEN_PREFIX + secrets.token_urlsafe(24)
    conn.execute(
        insert(api_tokens).values(
            name=name, role=role, token_hash=hash_token(token), expires_at=expires
        )
    )
    return token


def list_tokens(conn: Connection) -> list[TokenEntry]:
    """Every token, live ones first, then by name."""
    rows = conn.execute(
        select(
            api_tokens.c.name,
            api_tokens.c.role,
            api_tokens.c.created_at,
            api_tokens.c.last_used_at,
            api_tokens.c.revoked_at,
            api_tokens.c.expires_at,
        ).order_by(api_tokens.c.revoked_at.is_not(None), api_tokens.c.name, api_tokens.c.id)
    ).all()
    return [TokenEntry.model_validate(row._mapping) for row in rows]


def revoke_token(conn: Connection, *, name: str) -> None:
    """Revoke the live token called ``name``; every app process hears of it at commit.

    Raises
    ------
    NotFound
        When no live token has this name.
    """
    revoked = conn.execute(
        update(api_tokens)
        .where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))
        .values(revoked_at=func.now())
        .returning(api_tokens.c.id)
    ).first()
    if revoked is None:
        raise NotFound(f"no live token is called {name!r}", field="name")


def principal_for(conn: Connection, token: str) -> Principal | None:
    """The principal a presented token belongs to, or None if unknown, revoked or expired."""
    if not token or len(token) > 200:
        return None
    row = conn.execute(
        select(
            api_tokens.c.id,
            api_tokens.c.name,
            api_tokens.c.role,
            api_tokens.c.last_used_at,
            api_tokens.c.expires_at,
        ).where(
            api_tokens.c.token_hash == hash_token(token),
            api_tokens.c.revoked_at.is_(None),
            or_(
                api_tokens.c.expires_at.is_(None),
                api_tokens.c.expires_at > func.statement_timestamp(),
            ),
        )
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
    return Principal(name=row.name, role=row.role, token_id=row.id, expires_at=row.expires_at)
