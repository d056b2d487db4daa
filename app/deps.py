"""FastAPI dependencies shared by every router: database, settings, caller, roles."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from geo.core.auth import ROLES, Principal, hash_token, principal_for
from geo.core.db import Database
from geo.core.errors import Forbidden, Unauthorised
from geo.core.feed import ChangeFeed
from geo.core.replicas import ROUTE
from geo.core.settings import Settings
from geo.core.throttle import FailureThrottle

__all__ = [
    "AdminUser",
    "CurrentUser",
    "DbDep",
    "EnumeratorUser",
    "MapperUser",
    "PlannerUser",
    "PublicReader",
    "SettingsDep",
    "ViewerUser",
    "require",
]

TOKEN_CACHE_SECONDS = 30.0
_bearer = HTTPBearer(auto_error=False, description="API token from `makazi token create`")


# Dependencies are ``async def`` so FastAPI runs them on the event loop: a plain ``def``
# costs a thread-pool hop per dependency per request.  Blocking work (a token lookup
# that misses the cache) goes to the thread pool explicitly.


async def get_db(request: Request) -> Database:
    """The app's database (engines live in app state, owned by the lifespan)."""
    db: Database = request.app.state.db
    return db


async def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


DbDep = Annotated[Database, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def optional_user(
    request: Request,
    db: DbDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal | None:
    """The caller named by a bearer token, or None when anonymous.

    A token that is present but wrong is a 401 even where anonymous access
    would be allowed: a client with a typo should hear about it.
    """
    header = request.headers.get("authorization")
    if header is None:
        return None
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorised("the Authorization header must be 'Bearer <token>'")
    token = credentials.credentials
    # A cached token is trusted only under the change feed's token generation it was
    # looked up in: a revocation anywhere moves the generation in every worker at once.
    # Without a connected feed nothing is cached.
    feed: ChangeFeed | None = request.app.state.change_feed
    generation = feed.token_generation() if feed is not None else None
    cache: dict[str, tuple[float, int, Principal]] = request.app.state.token_cache
    key = hash_token(token)
    cached = cache.get(key)
    now = time.monotonic()
    if cached and cached[0] > now and cached[1] == generation:
        return _routed(cached[2])
    # Only uncached tokens are throttled: a team behind one address keeps working with
    # the tokens it used a moment ago while a guesser from that address waits.
    throttle: FailureThrottle = request.app.state.token_throttle
    client = request.client.host if request.client else "unknown"
    throttle.check(client)
    principal = await run_in_threadpool(_lookup, db, token)
    if principal is None:
        throttle.failed(client)
        raise Unauthorised("the bearer token is not valid (unknown, revoked or expired)")
    if generation is not None:
        if len(cache) > 10_000:
            cache.clear()
        lifetime = TOKEN_CACHE_SECONDS
        if principal.expires_at is not None:
            lifetime = min(lifetime, (principal.expires_at - datetime.now(UTC)).total_seconds())
        cache[key] = (now + lifetime, generation, principal)
    return _routed(principal)


def _routed(principal: Principal) -> Principal:
    """Name the caller in the request's read route (read-your-writes keys on the token)."""
    route = ROUTE.get()
    if route is not None:
        route.client = str(principal.token_id)
    return principal


def _lookup(db: Database, token: str) -> Principal | None:
    with db.begin() as conn:
        return principal_for(conn, token)


CurrentUser = Annotated[Principal | None, Depends(optional_user)]


def require(role: str) -> Callable[[Principal | None], Awaitable[Principal]]:
    """A dependency that admits callers whose role includes ``role``."""
    if role not in ROLES:
        raise ValueError(role)

    async def dependency(user: CurrentUser) -> Principal:
        if user is None:
            raise Unauthorised(f"this needs a bearer token with role {role} or higher")
        if not user.at_least(role):
            raise Forbidden(f"this needs role {role} or higher; your token has {user.role}")
        return user

    dependency.__name__ = f"require_{role}"
    return dependency


async def public_reader(user: CurrentUser, settings: SettingsDep) -> Principal | None:
    """Anyone when public read is on; otherwise a signed-in viewer or higher."""
    if user is None and not settings.public_read:
        raise Unauthorised("anonymous reads are switched off (MAKAZI_PUBLIC_READ=false)")
    return user


PublicReader = Annotated[Principal | None, Depends(public_reader)]
ViewerUser = Annotated[Principal, Depends(require("viewer"))]
MapperUser = Annotated[Principal, Depends(require("mapper"))]
EnumeratorUser = Annotated[Principal, Depends(require("enumerator"))]
PlannerUser = Annotated[Principal, Depends(require("planner"))]
AdminUser = Annotated[Principal, Depends(require("admin"))]
