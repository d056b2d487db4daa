"""Bearer tokens and roles: valid, wrong, missing, too low."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Connection, text

from app.deps import CurrentUser, MapperUser, PlannerUser, PublicReader
from app.main import create_app
from geo.core.auth import ROLES, create_token, hash_token, principal_for, role_at_least
from geo.core.settings import Settings
from tests.support.db import BoundDatabase


def _app(settings: Settings, db: BoundDatabase) -> FastAPI:
    app = create_app(settings, database=db)
    router = APIRouter()

    @router.get("/whoami")
    def whoami(user: CurrentUser) -> dict[str, str | None]:
        return {"name": user.name if user else None}

    @router.post("/edit")
    def edit(user: MapperUser) -> dict[str, str]:
        return {"role": user.role}

    @router.get("/plan")
    def plan(user: PlannerUser) -> dict[str, str]:
        return {"role": user.role}

    @router.get("/public")
    def public(user: PublicReader) -> dict[str, bool]:
        return {"anonymous": user is None}

    app.include_router(router)
    return app


@pytest.fixture
def auth_client(settings: Settings, db: BoundDatabase) -> TestClient:
    return TestClient(_app(settings, db), raise_server_exceptions=False)


def test_roles_are_ordered() -> None:
    assert ROLES == ("viewer", "mapper", "enumerator", "planner", "admin")
    assert role_at_least("admin", "viewer") and not role_at_least("mapper", "enumerator")


def test_token_is_stored_hashed(connection: Connection) -> None:
    token = create_token(connection, name="otieno", role="mapper")
    stored = connection.execute(
        text("SELECT token_hash FROM api_tokens WHERE name='otieno'")
    ).scalar()
    assert stored == hash_token(token) and token not in str(stored)
    principal = principal_for(connection, token)
    assert principal is not None and principal.name == "otieno" and principal.role == "mapper"
    assert principal_for(connection, token + "x") is None


def test_valid_token(auth_client: TestClient, token_for: Callable[..., dict[str, str]]) -> None:
    headers = token_for("mapper", "akinyi")
    assert auth_client.get("/whoami", headers=headers).json() == {"name": "akinyi"}
    assert auth_client.post("/edit", headers=headers).json() == {"role": "mapper"}


def test_missing_token_is_401(auth_client: TestClient) -> None:
    response = auth_client.post("/edit")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_wrong_token_is_401(auth_client: TestClient) -> None:
    response = auth_client.get("/whoami", headers={"Authorization": "Bearer mkz_nope"})
    assert response.status_code == 401
    assert "not valid" in response.json()["detail"]
    basic = auth_client.get("/whoami", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert basic.status_code == 401


def test_role_too_low_is_403(
    auth_client: TestClient, token_for: Callable[..., dict[str, str]]
) -> None:
    response = auth_client.get("/plan", headers=token_for("mapper"))
    assert response.status_code == 403
    assert "planner" in response.json()["detail"]
    assert auth_client.get("/plan", headers=token_for("admin")).status_code == 200


def test_revoked_token_is_401(auth_client: TestClient, connection: Connection) -> None:
    token = create_token(connection, name="gone", role="admin")
    connection.execute(text("UPDATE api_tokens SET revoked_at = now() WHERE name = 'gone'"))
    assert (
        auth_client.get("/whoami", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    )


def test_public_read_switch(
    settings: Settings, db: BoundDatabase, token_for: Callable[..., dict[str, str]]
) -> None:
    open_app = TestClient(_app(settings, db))
    assert open_app.get("/public").json() == {"anonymous": True}
    closed = TestClient(
        _app(settings.model_copy(update={"public_read": False}), db), raise_server_exceptions=False
    )
    assert closed.get("/public").status_code == 401
    assert closed.get("/public", headers=token_for("viewer")).json() == {"anonymous": False}
