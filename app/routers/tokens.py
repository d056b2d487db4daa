"""``/tokens``: API tokens for admins (list, create, revoke), as ``makazi token`` does."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select

from app.bodies import JsonBody
from app.deps import AdminUser, DbDep
from app.links import href
from app.preconditions import NO_STORE
from geo.core.auth import create_token, hash_token, list_tokens, revoke_token
from geo.core.documents import TokenCreated, TokenList
from geo.core.errors import InvalidInput
from geo.core.tables import api_tokens
from geo.layers.writes import parse_json

__all__ = ["router"]

router = APIRouter(tags=["tokens"])

TokenName = Annotated[str, Path(min_length=1, max_length=200)]


@router.get(
    "/tokens",
    summary="Every API token (admin): name, role, created, last used, revoked",
    responses={200: {"model": TokenList, "description": "The tokens, live ones first"}},
)
def get_tokens(user: AdminUser, db: DbDep) -> JSONResponse:
    """Never the tokens themselves: only their hashes are stored."""
    with db.read() as conn:
        tokens = list_tokens(conn)
    body = TokenList(tokens=tokens)
    return JSONResponse(body.model_dump(mode="json"), headers=NO_STORE)


@router.post(
    "/tokens",
    status_code=status.HTTP_201_CREATED,
    summary="Create a token (admin); the answer is the only time it is shown",
    responses={201: {"model": TokenCreated, "description": "The new token, shown once"}},
)
async def post_token(user: AdminUser, body: JsonBody, request: Request, db: DbDep) -> JSONResponse:
    """Body ``{"name": ..., "role": ..., "expires_in_days": n}`` (the last optional); 409 when
    a live token has the name."""
    fields = parse_json(body)
    if not isinstance(fields, dict) or not {"name", "role"} <= fields.keys():
        raise InvalidInput('the body must be {"name": ..., "role": ...}')
    name, role = fields["name"], fields["role"]
    if not isinstance(name, str) or not isinstance(role, str):
        raise InvalidInput("name and role must be strings")
    days = fields.get("expires_in_days")
    if days is not None and (isinstance(days, bool) or not isinstance(days, int | float)):
        raise InvalidInput("expires_in_days must be a number of days", field="expires_in_days")

    def create() -> tuple[str, Any]:
        with db.begin(actor=user.name) as conn:
            token = create_token(conn, name=name, role=role, expires_in_days=days)
            expires = conn.execute(
                select(api_tokens.c.expires_at).where(api_tokens.c.token_hash == hash_token(token))
            ).scalar_one()
            return token, expires

    token, expires = await run_in_threadpool(create)
    created = TokenCreated(name=name.strip(), role=role, token=token, expires_at=expires)
    location = href(request, f"/tokens/{created.name}")
    return JSONResponse(
        created.model_dump(mode="json"),
        status_code=status.HTTP_201_CREATED,
        headers={**NO_STORE, "Location": location},
    )


@router.delete(
    "/tokens/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke a token (admin); it stops working at once in every worker",
)
def delete_token(user: AdminUser, name: TokenName, request: Request, db: DbDep) -> Response:
    """404 when no live token has the name."""
    with db.begin(actor=user.name) as conn:
        revoke_token(conn, name=name)
    request.app.state.token_cache.clear()  # this worker at once; the others by the feed
    return Response(status_code=status.HTTP_204_NO_CONTENT)
