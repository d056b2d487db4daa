"""Tokens: one live token per name, listed and revoked from the CLI and the admin API.

A revoked token stops working at once in every worker: the revocation is
announced by PostgreSQL at commit and every app process drops its cached tokens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from sqlalchemy import Connection

from app.deps import CurrentUser
from geo.core.auth import create_token, list_tokens, principal_for, revoke_token
from geo.core.errors import Conflict, InvalidInput, NotFound
from geo.core.settings import Settings
from tests.support.cli import makazi
from tests.support.live import LiveServer

Auth = Callable[..., dict[str, str]]


def test_one_live_token_per_name(connection: Connection) -> None:
    first = create_token(connection, name="amina", role="mapper")
    with pytest.raises(Conflict, match="already called 'amina'"):
        create_token(connection, name=" amina ", role="viewer")
    revoke_token(connection, name="amina")
    assert principal_for(connection, first) is None
    second = create_token(connection, name="amina", role="viewer")  # the name is free again
    principal = principal_for(connection, second)
    assert principal is not None and principal.role == "viewer"
    listed = [(t.name, t.role, t.revoked_at is None) for t in list_tokens(connection)]
    assert listed.index(("amina", "viewer", True)) < listed.index(("amina", "mapper", False))


def test_bad_names_roles_and_unknown_revocations(connection: Connection) -> None:
    with pytest.raises(InvalidInput, match="role"):
        create_token(connection, name="x", role="chief")
    with pytest.raises(InvalidInput, match="name"):
        create_token(connection, name="  ", role="viewer")
    with pytest.raises(NotFound, match="no live token is called 'nobody'"):
        revoke_token(connection, name="nobody")


def test_cli_revocation_stops_a_cached_token_in_a_running_server(live_server: LiveServer) -> None:
    url = live_server.database_url
    create = ("token", "create", "--name", "lost-phone", "--role", "viewer")
    created = makazi(*create, MAKAZI_DATABASE_URL=url)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    again = makazi(*create, MAKAZI_DATABASE_URL=url)
    assert again.returncode == 1 and again.stderr.count("\n") == 1
    assert "already called 'lost-phone'" in again.stderr

    listed = makazi("token", "list", MAKAZI_DATABASE_URL=url)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert all(len(row) == 5 for row in rows)
    (row,) = [row for row in rows if row[0] == "lost-phone"]
    assert row[1] == "viewer" and row[2].endswith("Z") and row[4] == "-"

    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=live_server.base_url, headers=headers, timeout=30) as client:
        for _ in range(3):  # the server now holds the token in its cache
            assert client.get("/analysis/overlaps").status_code == 200
        revoked = makazi("token", "revoke", "lost-phone", MAKAZI_DATABASE_URL=url)
        assert revoked.returncode == 0, revoked.stderr
        # the notification reaches the server's feed right after the commit; poll briefly
        deadline = time.monotonic() + 15
        status = client.get("/analysis/overlaps").status_code
        while status == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
            status = client.get("/analysis/overlaps").status_code
        assert status == 401
    listed = makazi("token", "list", MAKAZI_DATABASE_URL=url)
    (row,) = [line.split("\t") for line in listed.stdout.splitlines() if line.startswith("lost")]
    assert row[4].endswith("Z")
    missing = makazi("token", "revoke", "lost-phone", MAKAZI_DATABASE_URL=url)
    assert missing.returncode == 1 and "no live token" in missing.stderr


def test_admin_api_lists_creates_and_revokes(client: TestClient, token_for: Auth) -> None:
    assert client.get("/tokens").status_code == 401
    assert client.get("/tokens", headers=token_for("planner")).status_code == 403
    admin = token_for("admin", name="root")

    made = client.post("/tokens", json={"name": "field-team-3", "role": "mapper"}, headers=admin)
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["name"] == "field-team-3" and body["role"] == "mapper"
    assert made.headers["location"].endswith("/tokens/field-team-3")
    new = {"Authorization": f"Bearer {body['token']}"}
    assert client.get("/traces", headers=new).status_code == 200

    clash = client.post("/tokens", json={"name": "field-team-3", "role": "viewer"}, headers=admin)
    assert clash.status_code == 409 and "already called" in clash.json()["detail"]
    bad = client.post("/tokens", json={"name": "x", "role": "chief"}, headers=admin)
    assert bad.status_code == 422 and "unknown role" in bad.json()["detail"]

    listing = client.get("/tokens", headers=admin)
    assert listing.status_code == 200 and listing.headers["cache-control"] == "private, no-store"
    entries = {entry["name"]: entry for entry in listing.json()["tokens"]}
    assert entries["field-team-3"]["revoked_at"] is None
    assert body["token"] not in listing.text and "token_hash" not in listing.text

    assert client.delete("/tokens/field-team-3", headers=admin).status_code == 204
    assert client.get("/traces", headers=new).status_code == 401
    assert client.delete("/tokens/field-team-3", headers=admin).status_code == 404
    entries = {
        entry["name"]: entry for entry in client.get("/tokens", headers=admin).json()["tokens"]
    }
    assert entries["field-team-3"]["revoked_at"] is not None


def test_a_token_stops_working_when_it_expires(
    client: TestClient, connection: Connection, token_for: Auth
) -> None:
    token = create_token(connection, name="visitor", role="viewer", expires_in_days=2 / 86_400)
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/analysis/overlaps", headers=headers).status_code == 200
    (entry,) = [t for t in list_tokens(connection) if t.name == "visitor"]
    assert entry.expires_at is not None
    time.sleep(2.5)
    refused = client.get("/analysis/overlaps", headers=headers)
    assert refused.status_code == 401 and "expired" in refused.json()["detail"]
    assert principal_for(connection, token) is None
    with pytest.raises(InvalidInput, match="expires_in_days"):
        create_token(connection, name="never", role="viewer", expires_in_days=-1)
    # over HTTP, an admin may give a lifetime too
    made = client.post(
        "/tokens",
        json={"name": "field-week", "role": "mapper", "expires_in_days": 7},
        headers=token_for("admin"),
    )
    assert made.status_code == 201 and made.json()["expires_at"].startswith("20")
    bad = client.post(
        "/tokens",
        json={"name": "odd", "role": "mapper", "expires_in_days": "soon"},
        headers=token_for("admin"),
    )
    assert bad.status_code == 422 and bad.json()["field"] == "expires_in_days"


class TestFailedAttempts:
    @pytest.fixture
    def app_settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"token_failures_per_minute": 3})

    def test_guessing_tokens_gets_429_with_retry_after(
        self, client: TestClient, token_for: Auth
    ) -> None:
        for i in range(3):
            wrong = {"Authorization": f"Bearer mkz_guess{i}"}
            assert client.get("/analysis/overlaps", headers=wrong).status_code == 401
        stopped = client.get("/analysis/overlaps", headers={"Authorization": "Bearer mkz_guess9"})
        assert stopped.status_code == 429
        assert stopped.headers["content-type"].startswith("application/problem+json")
        assert 0 < int(stopped.headers["retry-after"]) <= 60
        assert "too many failed token attempts" in stopped.json()["detail"]
        # anonymous reads are not attempts
        assert client.get("/collections").status_code == 200


def test_tokens_are_never_logged(
    client: TestClient, token_for: Auth, caplog: pytest.LogCaptureFixture
) -> None:
    """Every log record of token use, failure, creation and revocation: no token in any."""
    router = APIRouter()

    @router.get("/boom-after-auth")
    def boom(user: CurrentUser) -> None:
        raise RuntimeError(f"failed for {user.name if user else None}")

    app: Any = client.app
    app.include_router(router)
    admin = token_for("admin", name="log-root")
    secret = admin["Authorization"].removeprefix("Bearer ")
    # other tests may have configured the makazi loggers not to propagate: listen on them directly
    makazi_log = logging.getLogger("makazi")
    makazi_log.addHandler(caplog.handler)
    level = makazi_log.level
    makazi_log.setLevel(logging.DEBUG)
    try:
        used = _use_tokens(client, admin, caplog)
    finally:
        makazi_log.removeHandler(caplog.handler)
        makazi_log.setLevel(level)
    logged = "\n".join(record.getMessage() for record in caplog.records) + caplog.text
    assert any(r.name == "makazi.http" and r.exc_info for r in caplog.records), caplog.records
    for token in (secret, *used):
        assert token not in logged


def _use_tokens(
    client: TestClient, admin: dict[str, str], caplog: pytest.LogCaptureFixture
) -> list[str]:
    """Create, use, mistype and revoke a token; the tokens used."""
    with caplog.at_level(logging.DEBUG):
        made = client.post("/tokens", json={"name": "log-team", "role": "mapper"}, headers=admin)
        assert made.status_code == 201
        new = made.json()["token"]
        assert client.get("/traces", headers={"Authorization": f"Bearer {new}"}).status_code == 200
        wrong = f"{new[:-4]}zzzz"
        assert (
            client.get("/traces", headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
        )
        assert client.delete("/tokens/log-team", headers=admin).status_code == 204
        assert client.get("/traces", headers={"Authorization": f"Bearer {new}"}).status_code == 401
        # an unexpected error after the token was read is logged with its traceback
        boomed = client.get("/boom-after-auth", headers=admin)
        assert boomed.status_code == 500, boomed.text
    return [new, wrong]


def test_a_lifetime_of_zero_days_is_refused_saying_so(connection: Connection) -> None:
    with pytest.raises(InvalidInput, match=r"more than 0 and at most 36500 days"):
        create_token(connection, name="instant", role="viewer", expires_in_days=0)
