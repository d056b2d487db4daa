"""Test fixtures: one embedded PostGIS cluster and one migrated database per session.

Each test runs inside a transaction that is rolled back at the end, so tests
see a clean database without paying for a new one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.pool import NullPool

from app.main import create_app
from geo.core.auth import create_token
from geo.core.cluster import EmbeddedCluster, ensure_postgis
from geo.core.db import make_engine, migrate
from geo.core.settings import Settings
from tests.support.db import BoundDatabase
from tests.support.live import LiveServer, live_server_running

# Test clusters trade durability for speed: their data is thrown away.
FAST_SERVER = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
#: The session's database, for the report of a test that a statement timeout failed.
_DATABASE: dict[str, str] = {}
#: What the other sessions were doing when a test's statement ran out of time.
_ACTIVITY = """
SELECT a.pid, a.state, now() - a.xact_start AS in_transaction, a.wait_event_type, a.wait_event,
       pg_blocking_pids(a.pid) AS blocked_by, left(a.query, 300) AS query
FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
"""


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    """The embedded cluster for the whole test session."""
    ensure_postgis(install=os.geteuid() == 0, quiet=True)
    pg = EmbeddedCluster(tmp_path_factory.mktemp("makazi-data"), server_options=FAST_SERVER)
    pg.start()
    yield pg
    pg.stop()


@pytest.fixture(scope="session")
def database_url(cluster: EmbeddedCluster) -> str:
    """A freshly migrated database."""
    url = cluster.create_database("makazi_test", drop=True)
    migrate(url)
    _DATABASE["url"] = url
    return url


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Add the database's sessions to the report of a test a statement timeout failed."""
    report = yield
    if call.excinfo is not None and "statement timeout" in str(call.excinfo.value):
        report.sections.append(("database sessions at the timeout", _sessions()))
    return report


def _sessions() -> str:
    """One line per other session of the test database (best effort)."""
    try:
        engine = create_engine(_DATABASE["url"], poolclass=NullPool)
        with engine.connect() as conn:
            rows = conn.execute(text(_ACTIVITY)).all()
        engine.dispose()
    except Exception as error:  # a diagnostic must never hide the failure itself
        return f"could not list sessions: {error}"
    return "\n".join(" | ".join(str(v) for v in row) for row in rows) or "no other session"


@pytest.fixture(scope="session")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings pointing at the test database."""
    return Settings(database_url=database_url, data_dir=tmp_path_factory.mktemp("app-data"))


@pytest.fixture(scope="session")
def engine(database_url: str, settings: Settings) -> Iterator[Engine]:
    """Engine on the test database."""
    eng = make_engine(database_url, settings, pool_size=4)
    yield eng
    eng.dispose()


@pytest.fixture
def connection(engine: Engine) -> Iterator[Connection]:
    """A connection inside a transaction rolled back after the test."""
    with engine.connect() as conn:
        outer = conn.begin()
        try:
            yield conn
        finally:
            outer.rollback()


@pytest.fixture
def db(connection: Connection) -> BoundDatabase:
    """The app's database view of the test transaction."""
    return BoundDatabase(connection)


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    """Settings for the app under test (override fields with model_copy)."""
    return settings


@pytest.fixture
def client(app_settings: Settings, db: BoundDatabase) -> Iterator[TestClient]:
    """An HTTP client on an app bound to the test transaction."""
    app = create_app(app_settings, database=db)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def token_for(connection: Connection) -> Callable[[str], dict[str, str]]:
    """An ``Authorization`` header for the user ``name`` (default ``<role>-user``) with ``role``.

    A name has one live token, so asking again for the same name and role
    gives the same header.
    """
    made: dict[str, tuple[str, dict[str, str]]] = {}

    def make(role: str, name: str | None = None) -> dict[str, str]:
        user = name or f"{role}-user"
        if user in made:
            made_role, header = made[user]
            assert made_role == role, f"{user} already has a {made_role} token"
            return header
        token = create_token(connection, name=user, role=role)
        made[user] = (role, {"Authorization": f"Bearer {token}"})
        return made[user][1]

    return make


@pytest.fixture(scope="session")
def live_server(cluster: EmbeddedCluster) -> Iterator[LiveServer]:
    """A uvicorn server on a free port with 400 demo structures and a token per role."""
    with live_server_running(cluster) as server:
        yield server
