"""Engines, connections and migrations.

The only place that turns settings into a SQLAlchemy engine.  With no
``MAKAZI_DATABASE_URL`` the embedded cluster's URL is used.
"""

from __future__ import annotations

import importlib.util
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from geo.core.answers import AnswerCache
from geo.core.cluster import EmbeddedCluster
from geo.core.replicas import ROUTE, WRITES_CHANNEL, RecentWriters, ReplicaSet
from geo.core.settings import Settings

__all__ = [
    "ACTOR_SQL",
    "MIGRATIONS_DIR",
    "Database",
    "act_as",
    "current_revision",
    "downgrade",
    "libpq_conninfo",
    "make_engine",
    "migrate",
    "normalise_url",
    "own_begin",
    "begin_is_ours",
    "pending_actor",
    "replica_failure",
    "resolve_url",
    "set_statement_timeout",
]


def _migrations_dir() -> Path:
    """The folder of the ``migrations`` package (Alembic's scripts), wherever it is installed.

    From a checkout (editable install) that is ``<repo>/migrations``, from a wheel
    ``site-packages/migrations``.  The package is found with importlib, not imported.  An
    editable install made before ``migrations`` became a package does not map it; then
    the checkout's folder beside ``geo`` is used.
    """
    spec = importlib.util.find_spec("migrations")
    if spec is not None and spec.submodule_search_locations:
        found = Path(next(iter(spec.submodule_search_locations))).resolve()
        if (found / "env.py").is_file():
            return found
    checkout = Path(__file__).resolve().parents[2] / "migrations"
    if (checkout / "env.py").is_file():
        return checkout
    raise ImportError("Makazi's `migrations` package is not installed (reinstall makazi)")


MIGRATIONS_DIR = _migrations_dir()


def _hosts_as_query(url: str) -> str:
    """libpq's multi-host URL (``h1:p1,h2:p2`` in the authority) in SQLAlchemy's spelling.

    pg_auto_failover (``pg_autoctl show uri``) and Patroni hand out the libpq form;
    SQLAlchemy wants ``/db?host=h1:p1&host=h2:p2``.

    >>> _hosts_as_query("postgres://u@a:1,b:2/db?target_session_attrs=read-write")
    'postgres://u@/db?host=a:1&host=b:2&target_session_attrs=read-write'
    """
    scheme, found, rest = url.partition("://")
    authority, _, tail = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if not found or "," not in hosts:
        return url
    database, _, query = tail.partition("?")
    params = "&".join(f"host={host}" for host in hosts.split(",") if host)
    return f"{scheme}://{userinfo}{at}/{database}?{params}" + (f"&{query}" if query else "")


def normalise_url(url: str) -> str:
    """Make a ``postgres://`` or ``postgresql://`` URL use the psycopg 3 driver.

    A libpq multi-host URL (``h1:p1,h2:p2``) is accepted too.

    >>> normalise_url("postgresql://u@h/db")
    'postgresql+psycopg://u@h/db'
    """
    parsed = make_url(_hosts_as_query(url).replace("postgres://", "postgresql://", 1))
    if parsed.drivername in {"postgresql", "postgresql+psycopg2", "postgresql+psycopg"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def libpq_conninfo(url: str | URL) -> str:
    """The libpq connection string of a SQLAlchemy URL, several hosts included.

    SQLAlchemy spells a multi-host URL ``?host=h1:p1&host=h2:p2``; libpq wants
    ``host=h1,h2 port=p1,p2``.

    >>> libpq_conninfo("postgresql://u@/db?host=a:1&host=b:2&target_session_attrs=read-write")
    'user=u dbname=db host=a,b port=1,2 target_session_attrs=read-write'
    """
    from psycopg.conninfo import make_conninfo

    parsed = make_url(normalise_url(url) if isinstance(url, str) else url)
    params: dict[str, str] = {}
    for key, value in (
        ("user", parsed.username),
        ("password", parsed.password),
        ("dbname", parsed.database),
        ("host", parsed.host),
        ("port", str(parsed.port) if parsed.port else None),
    ):
        if value:
            params[key] = str(value)
    for key, raw in parsed.query.items():
        values = [raw] if isinstance(raw, str) else list(raw)
        if key == "host":
            pairs = [item.rpartition(":") if ":" in item else (item, "", "") for item in values]
            params["host"] = ",".join(host for host, _, _ in pairs)
            if any(port for _, _, port in pairs):
                params["port"] = ",".join(port or "5432" for _, _, port in pairs)
        else:
            params[key] = ",".join(values)
    return make_conninfo(**params)


def resolve_url(settings: Settings) -> str:
    """The database URL the settings point at (the embedded cluster by default)."""
    if settings.database_url:
        return normalise_url(settings.database_url)
    return EmbeddedCluster(settings.data_dir).url()


def make_engine(url: str, settings: Settings, *, pool_size: int | None = None) -> Engine:
    """An engine with a bounded pool, a statement timeout and an idle-in-transaction timeout.

    PostgreSQL ends a session left idle inside a transaction longer than
    ``idle_in_transaction_timeout_ms`` (a leaked stream, a stuck client), so
    it cannot hold a pool connection and a snapshot for ever.

    No pre-ping (a round trip on every checkout): when the server restarts, the
    first statement on a dead connection fails as a disconnect, SQLAlchemy then
    discards every pooled connection, that one request gets a 503 and the next
    ones reconnect.
    """
    connect_args: dict[str, object] = {
        "connect_timeout": 5,
        "options": f"-c statement_timeout={settings.statement_timeout_ms} "
        f"-c idle_in_transaction_session_timeout={settings.idle_in_transaction_timeout_ms}",
        "application_name": "makazi",
    }
    if not settings.database_prepared_statements:
        connect_args["prepare_threshold"] = None
    engine = create_engine(
        normalise_url(url),
        pool_pre_ping=False,
        pool_size=pool_size or settings.pool_size,
        max_overflow=settings.pool_size,
        pool_timeout=10,
        connect_args=connect_args,
    )
    event.listen(engine, "handle_error", _read_only_is_a_disconnect)
    event.listen(engine, "checkin", _implicit_again)
    return engine


def _read_only_is_a_disconnect(context: ExceptionContext) -> None:
    """Treat "read-only transaction" as a lost connection: the server was demoted.

    After a failover a pooled connection may still reach the old primary, now a
    standby.  Marking the error a disconnect makes SQLAlchemy drop every pooled
    connection, that request gets a 503, and the next connections find the new
    primary (``target_session_attrs=read-write``).
    """
    import psycopg.errors as pg

    if isinstance(context.original_exception, pg.ReadOnlySqlTransaction):
        context.is_disconnect = True


def _alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (Alembic)."""
    command.upgrade(_alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Downgrade the database to ``revision`` (``base`` removes everything)."""
    command.downgrade(_alembic_config(url), revision)


def current_revision(connection: Connection) -> str | None:
    """The Alembic revision the connected database is at, or None."""
    exists = connection.execute(text("SELECT to_regclass('public.alembic_version')")).scalar()
    if exists is None:
        return None
    value = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return str(value) if value is not None else None


#: Names the actor for the rest of the transaction (psycopg's parameter style).
ACTOR_SQL = "SELECT set_config('makazi.user', %s, true)"


def act_as(connection: Connection, actor: str) -> None:
    """Name the actor that triggers write into history for this transaction.

    Pipelined on psycopg; psycopg still sends the ``BEGIN`` that opens the transaction
    with a ``Sync`` of its own and waits for it (libpq's trace shows two round trips), so
    a writer that can send the actor with its own statements begins with ``defer_actor``
    (:meth:`Database.begin`).
    """
    raw = connection.connection.driver_connection
    if isinstance(raw, psycopg.Connection):
        with raw.pipeline():
            raw.execute(ACTOR_SQL, (actor,))
        return
    connection.execute(text("SELECT set_config('makazi.user', :actor, true)"), {"actor": actor})


#: The actors of transactions begun with ``defer_actor``, by connection, until named
#: (kept beside the connection, not in it: a lost connection still ends cleanly).
_DEFERRED_ACTORS: weakref.WeakKeyDictionary[Connection, str] = weakref.WeakKeyDictionary()


def pending_actor(connection: Connection) -> str | None:
    """The actor of a transaction begun with ``defer_actor`` if not named yet, taken:
    the caller names it now, before its first statement (say in its own pipeline)."""
    return _DEFERRED_ACTORS.pop(connection, None)


def _name_deferred_actor(
    conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
) -> None:
    """Before the first statement through SQLAlchemy, name a deferred actor (listening on
    that transaction's connection only)."""
    actor = _DEFERRED_ACTORS.pop(conn, None)
    if actor:
        cursor.execute(ACTOR_SQL, (actor,))


#: The driver connections put in autocommit by :func:`own_begin`, until checked in.
_OWN_BEGIN: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()


def own_begin(connection: Connection) -> psycopg.Connection[Any] | None:
    """The psycopg connection under ``connection``, ready for the caller to send the
    transaction's ``BEGIN`` with its first statements, or None when it cannot.

    psycopg opens a transaction by sending ``BEGIN`` and waiting for its answer, a
    round trip of its own even inside a pipeline (it follows the ``BEGIN`` with a
    ``Sync``).  When nothing has been sent in this transaction yet, the connection
    is put in autocommit here, so that a ``BEGIN`` the caller sends at the head of
    its pipeline opens the same transaction (read committed, psycopg's own) in the
    pipeline's one round trip.  The transaction then goes on as any other: later
    statements run inside it and SQLAlchemy's commit or rollback ends it; the caller
    may also end it with a ``COMMIT`` of its own, then calls :func:`own_end`.
    Autocommit is turned off again when the pool takes the connection back
    (:func:`make_engine`'s engines only: others get None).

    None also when the transaction has begun already (a statement was sent: a
    savepoint, an ``Idempotency-Key`` claim), or the connection has its own
    isolation level or access mode.
    """
    raw = connection.connection.driver_connection
    if (
        not isinstance(raw, psycopg.Connection)
        or raw.autocommit
        or raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
        or (raw.isolation_level, raw.read_only, raw.deferrable) != (None, None, None)
        or not event.contains(connection.engine, "checkin", _implicit_again)
    ):
        return None
    raw.autocommit = True
    _OWN_BEGIN.add(raw)
    return raw


def begin_is_ours(raw: psycopg.Connection[Any]) -> bool:
    """Whether the caller sends the ``BEGIN`` of ``raw``'s next transaction: :func:`own_begin`
    handed it over (it stays so until the pool takes it back) and no transaction is open."""
    return raw in _OWN_BEGIN and raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def own_end(raw: psycopg.Connection[Any]) -> None:
    """After the caller's own ``COMMIT`` (:func:`own_begin`): psycopg opens the
    connection's next transaction itself again."""
    if raw in _OWN_BEGIN and raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        raw.autocommit = False
        _OWN_BEGIN.discard(raw)


def _implicit_again(dbapi_connection: Any, record: Any) -> None:
    """Pool check-in: a connection :func:`own_begin` put in autocommit leaves it (its
    transaction ended by the pool's reset)."""
    if dbapi_connection is not None and dbapi_connection in _OWN_BEGIN:
        own_end(dbapi_connection)


class Database:
    """The primary engine and, when configured, read replicas.

    Writes go to the primary inside one transaction that names its actor;
    reads go to a healthy replica when there is one, else the primary, by the
    rule in :mod:`geo.core.replicas` (read-your-writes, lag, failures).
    """

    def __init__(
        self,
        engine: Engine,
        replicas: Sequence[Engine] = (),
        *,
        max_lag_s: float = 10.0,
        check_s: float = 2.0,
        read_after_write_s: float = 5.0,
        listen_url: str = "",
        answer_cache_entries: int = 0,
    ) -> None:
        self.engine = engine
        self.answers = AnswerCache(answer_cache_entries)
        self.listen_url = listen_url
        self.replicas = ReplicaSet(list(replicas), max_lag_s=max_lag_s, check_s=check_s)
        self.writers = RecentWriters(read_after_write_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """Engines for the configured (or embedded) database and its replicas."""
        primary = make_engine(resolve_url(settings), settings)
        replicas = [make_engine(url, settings) for url in settings.database_replica_urls]
        return cls(
            primary,
            replicas,
            max_lag_s=settings.replica_max_lag_s,
            check_s=settings.replica_check_s,
            read_after_write_s=settings.read_after_write_s,
            listen_url=settings.database_listen_url,
            answer_cache_entries=settings.answer_cache_entries,
        )

    @contextmanager
    def begin(self, actor: str | None = None, *, defer_actor: bool = False) -> Iterator[Connection]:
        """A connection in a transaction on the primary, committed on success.

        Inside a request by a signed-in client that writes, the commit also tells
        every process (``NOTIFY``) that this client's next reads belong on the primary.

        ``defer_actor``: the actor is named with the transaction's first statement
        rather than in a round trip of its own: by SQLAlchemy's (an event of this connection), or
        by the caller that takes it with :func:`pending_actor` before going to the
        driver connection (say to send it in a pipeline with its own statements).
        """
        route = ROUTE.get()
        writer = route.client if route is not None and route.writes and self.replicas else None
        with self.engine.begin() as conn:
            try:
                if actor and defer_actor:
                    _DEFERRED_ACTORS[conn] = actor
                    event.listen(conn, "before_cursor_execute", _name_deferred_actor)
                elif actor:
                    act_as(conn, actor)
                if writer is not None:
                    conn.execute(
                        text("SELECT pg_notify(:channel, :client)"),
                        {"channel": WRITES_CHANNEL, "client": writer},
                    )
                yield conn
            finally:
                _DEFERRED_ACTORS.pop(conn, None)
        if writer is not None:
            self.writers.mark(writer)

    def read_engine(self) -> Engine:
        """The engine the current read should use (see :mod:`geo.core.replicas`)."""
        if not self.replicas:
            return self.engine
        route = ROUTE.get()
        if route is not None and (
            route.primary
            or route.writes
            or (route.client is not None and self.writers.recent(route.client))
        ):
            return self.engine
        return self.replicas.pick() or self.engine

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reading (a healthy replica when there is one).

        A replica that refuses the connection is skipped and the primary answers.
        A replica lost during the read marks the request's route ``lost`` (the
        app retries the request on the primary) and the error propagates.  A
        server lost after the read, when its transaction is ended, fails nothing.
        """
        engine = self.read_engine()
        try:
            conn = engine.connect()
        except DBAPIError as exc:
            if engine is self.engine:
                raise
            self.replicas.mark_down(engine, exc)
            engine = self.engine
            conn = engine.connect()
        with conn:
            try:
                yield conn
            except DBAPIError as exc:
                if engine is not self.engine and replica_failure(exc):
                    if exc.connection_invalidated:
                        self.replicas.mark_down(engine, exc)
                    route = ROUTE.get()
                    if route is not None:
                        route.lost = True
                raise
            try:
                conn.rollback()
            except DBAPIError as exc:
                # the read is complete: a server lost only now costs its connection
                if not exc.connection_invalidated:
                    raise
                if engine is not self.engine:
                    self.replicas.mark_down(engine, exc)

    def on_primary(self, conn: Connection) -> bool:
        """Whether ``conn`` (from :meth:`read` or :meth:`begin`) is on the primary."""
        return conn.engine is self.engine

    def note_write(self, client: str) -> None:
        """Another process committed a write by ``client`` (from the change feed)."""
        self.writers.mark(client)

    def notifications_url(self) -> str | None:
        """The libpq URL to ``LISTEN`` on for committed changes (the primary's).

        ``MAKAZI_DATABASE_LISTEN_URL`` when set (the primary behind a pooler, which
        cannot hold a ``LISTEN`` in transaction mode), else the primary's own URL.
        """
        return libpq_conninfo(self.listen_url or self.engine.url)

    def dispose(self) -> None:
        """Close every pooled connection (and stop checking the replicas)."""
        self.engine.dispose()
        self.replicas.stop()


def replica_failure(exc: DBAPIError) -> bool:
    """Whether a read that failed on a replica should be answered again by the primary.

    A lost connection, a server shutting down, or a query cancelled because of a
    conflict with recovery, yes; a statement timeout, no (the primary would be as slow).
    """
    import psycopg.errors as pg

    if exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError) and not isinstance(exc.orig, pg.QueryCanceled)


def set_statement_timeout(conn: Connection, timeout_ms: int) -> None:
    """Give the rest of this transaction's statements ``timeout_ms`` (a long export, import
    or upload outlasts the ordinary per-statement timeout; still bounded)."""
    conn.execute(
        text("SELECT set_config('statement_timeout', :ms, true)"), {"ms": str(int(timeout_ms))}
    )
