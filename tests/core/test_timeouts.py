"""The engine's session settings take effect: statement and idle-in-transaction timeouts."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError

from geo.core.db import make_engine
from geo.core.settings import Settings


def test_a_session_idle_in_a_transaction_is_ended(settings: Settings) -> None:
    """A leaked transaction cannot hold its connection and snapshot past the setting."""
    short = settings.model_copy(update={"idle_in_transaction_timeout_ms": 300})
    engine = make_engine(settings.database_url, short, pool_size=1)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))  # the transaction is open now
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            time.sleep(1.5)  # idle inside it, past the timeout
            with pytest.raises(DBAPIError) as ended:
                conn.execute(text("SELECT 1"))
            assert isinstance(ended.value, OperationalError) or ended.value.connection_invalidated
            assert "idle-in-transaction" in str(ended.value.orig) or "terminat" in str(
                ended.value.orig
            )
        observer = make_engine(settings.database_url, settings)
        with observer.connect() as check:
            alive = check.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": pid}
            ).scalar_one()
        observer.dispose()
        assert alive == 0
    finally:
        engine.dispose()


def test_a_statement_past_the_timeout_is_cancelled(settings: Settings) -> None:
    short = settings.model_copy(update={"statement_timeout_ms": 200})
    engine = make_engine(settings.database_url, short, pool_size=1)
    try:
        with engine.connect() as conn, pytest.raises(OperationalError, match="statement timeout"):
            conn.execute(text("SELECT pg_sleep(2)"))
    finally:
        engine.dispose()
