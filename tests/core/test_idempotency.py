"""Idempotency keys: claim, replay, reuse with other content, rollback frees the key."""

from __future__ import annotations

import pytest
from sqlalchemy import Connection

from geo.core.errors import BadRequest
from geo.core.idempotency import KeyReused, claim, complete, request_hash


def test_claim_complete_replay(connection: Connection) -> None:
    fp = request_hash(b"body", "name=x")
    assert claim(connection, principal="u", key="k1", scope="POST /x", fingerprint=fp) is None
    complete(
        connection,
        principal="u",
        key="k1",
        status=201,
        body={"id": 5},
        headers={"Location": "/x/5"},
    )
    stored = claim(connection, principal="u", key="k1", scope="POST /x", fingerprint=fp)
    assert stored is not None and stored.status == 201 and stored.body == b'{"id": 5}'
    assert stored.headers == {"Location": "/x/5"}
    # keys are per user
    assert claim(connection, principal="v", key="k1", scope="POST /x", fingerprint=fp) is None


def test_same_key_other_request_is_refused(connection: Connection) -> None:
    claim(connection, principal="u", key="k2", scope="POST /x", fingerprint=request_hash(b"a"))
    complete(connection, principal="u", key="k2", status=201, body=b"{}")
    with pytest.raises(KeyReused):
        claim(connection, principal="u", key="k2", scope="POST /x", fingerprint=request_hash(b"b"))


def test_rolled_back_claim_frees_the_key(connection: Connection) -> None:
    savepoint = connection.begin_nested()
    claim(connection, principal="u", key="k3", scope="s", fingerprint="f")
    savepoint.rollback()
    assert claim(connection, principal="u", key="k3", scope="s", fingerprint="f") is None


def test_bad_keys(connection: Connection) -> None:
    for key in ("", "x" * 256):
        with pytest.raises(BadRequest):
            claim(connection, principal="u", key=key, scope="s", fingerprint="f")
