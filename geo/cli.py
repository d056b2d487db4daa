"""The ``makazi`` command line.

Each command prints what it did on stdout and, when it fails, exactly one
line on stderr and a non-zero exit status: no tracebacks for the person at the
terminal (set ``MAKAZI_LOG_LEVEL=debug`` to see them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from geo.cluster import EmbeddedCluster
from geo.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["main"]

log = logging.getLogger("makazi")


class CommandError(Exception):
    """A failure to report as one line on stderr."""


def _settings() -> Settings:
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "MAKAZI_" + str(first["loc"][0]).upper() if first["loc"] else "MAKAZI_*"
        raise CommandError(f"bad setting {name}: {first['msg']}") from exc


def _cluster(settings: Settings) -> EmbeddedCluster:
    return EmbeddedCluster(settings.data_dir)


@contextlib.contextmanager
def _database(settings: Settings, *, keep_running: bool = False) -> Iterator[str]:
    """Yield a database URL; start the embedded cluster for the duration if needed."""
    from geo.cluster import ensure_postgis
    from geo.db import resolve_url

    if settings.database_url:
        yield resolve_url(settings)
        return
    ensure_postgis(install=os.geteuid() == 0, quiet=True)
    cluster = _cluster(settings)
    started = cluster.start()
    try:
        yield cluster.url()
    finally:
        if started and not keep_running:
            cluster.stop()


def _engine(settings: Settings, url: str) -> Engine:
    from geo.db import make_engine

    return make_engine(url, settings, pool_size=2)


def _migrate(url: str) -> None:
    from geo.db import migrate

    migrate(url)


# --------------------------------------------------------------------- commands
def cmd_db(args: argparse.Namespace) -> int:
    from geo.cluster import ensure_postgis

    settings = _settings()
    if args.action == "ensure":
        pg = ensure_postgis(install=True)
        print(f"PostgreSQL {pg.major} with PostGIS: {pg.bin_dir}")
        return 0
    if settings.database_url and args.action != "url":
        raise CommandError(
            "MAKAZI_DATABASE_URL is set: this server is not managed by makazi (unset it to use "
            "the embedded cluster)"
        )
    cluster = _cluster(settings)
    if args.action == "start":
        ensure_postgis(install=os.geteuid() == 0, quiet=True)
        started = cluster.start()
        print(("started" if started else "already running") + f" on port {cluster.port}")
    elif args.action == "stop":
        print("stopped" if cluster.stop() else "not running")
    elif args.action == "status":
        status = cluster.status()
        print(json.dumps(status))
        return 0 if status["running"] else 3
    elif args.action == "url":
        if settings.database_url:
            from geo.db import normalise_url

            print(normalise_url(settings.database_url))
        elif not cluster.initialised:
            raise CommandError("the embedded cluster does not exist yet; run `makazi db start`")
        else:
            print(cluster.url())
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings()
    with _database(settings) as url:
        _migrate(url)
    print("database is at the newest revision")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from geo.auth import ROLES, create_token

    if args.role not in ROLES:
        raise CommandError(f"unknown role {args.role!r}; one of {', '.join(ROLES)}")
    settings = _settings()
    with _database(settings) as url:
        _migrate(url)
        engine = _engine(settings, url)
        with engine.begin() as conn:
            token = create_token(conn, name=args.name, role=args.role)
        engine.dispose()
    print(token)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from geo.demo import generate, load

    settings = _settings()
    started = time.monotonic()
    data = generate(args.structures, seed=args.seed)
    with _database(settings) as url:
        _migrate(url)
        engine = _engine(settings, url)
        with engine.begin() as conn:
            counts = load(conn, data)
        engine.dispose()
    took = time.monotonic() - started
    print(", ".join(f"{value} {key}" for key, value in counts.items()) + f" in {took:.1f} s")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from geo.exports import export_format, stream_export
    from geo.layers.registry import COLLECTIONS

    collection = COLLECTIONS.get(args.collection)
    if collection is None:
        raise CommandError(
            f"unknown collection {args.collection!r}; one of {', '.join(COLLECTIONS)}"
        )
    fmt = export_format(args.format)
    settings = _settings()
    from geo.auth import Principal

    everyone = Principal(name="makazi-cli", role="admin", token_id=0)
    written = 0
    with _database(settings) as url:
        engine = _engine(settings, url)
        with engine.connect() as conn, open(args.output, "wb") as out:
            for chunk in stream_export(
                conn, collection, fmt, user=everyone, settlement_id=args.settlement
            ):
                out.write(chunk)
                written += len(chunk)
        engine.dispose()
    print(f"wrote {written:,} bytes to {args.output}")
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from pathlib import Path

    from geo.trace_upload import upload_files

    paths = [Path(p) for p in args.files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise CommandError(f"no such file: {missing[0]}")
    token = args.token or os.environ.get("MAKAZI_TOKEN")
    url = args.url or os.environ.get("MAKAZI_URL") or "http://127.0.0.1:8000"
    options = {"name": args.name, "visibility": args.visibility, "settlement_id": args.settlement}
    if token:
        report = upload_files(paths, url=url, token=token, **options)
    else:
        settings = _settings()
        with _database(settings) as db_url:
            _migrate(db_url)
            report = upload_files(
                paths,
                database_url=db_url,
                settings=settings,
                owner=args.owner or os.environ.get("USER", "cli"),
                **options,
            )
    print(report.summary())
    if report.failed:
        raise CommandError(f"{len(report.failed)} of {len(paths)} file(s) failed")
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from geo.demo import generate, is_empty, load

    settings = _settings()
    if _port_in_use(args.host, args.port):
        raise CommandError(f"port {args.port} on {args.host} is in use; pick another with --port")
    with _database(settings) as url:
        _migrate(url)
        if args.demo:
            engine = _engine(settings, url)
            with engine.begin() as conn:
                if is_empty(conn):
                    print(f"loading demo data ({settings.demo_structures} structures)...")
                    counts = load(conn, generate(settings.demo_structures, settings.demo_seed))
                    print(", ".join(f"{v} {k}" for k, v in counts.items()))
            engine.dispose()
        print(f"Makazi on http://{args.host}:{args.port}/  (map: /map, API: /api)", flush=True)
        # uvicorn re-raises the signal that stopped it once it has shut down; make SIGTERM
        # unwind like Ctrl-C so the embedded database is stopped on the way out.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=settings.log_level,
            proxy_headers=True,
        )
    return 0


# ------------------------------------------------------------------------ parser
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="makazi", description="Makazi: mapping service for informal settlements."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP service (starts the embedded PostGIS)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--demo", action="store_true", help="load demo data into an empty DB")
    serve.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", help="the embedded PostgreSQL/PostGIS cluster")
    db.add_argument("action", choices=["start", "stop", "status", "url", "ensure"])
    db.set_defaults(func=cmd_db)

    migrate = sub.add_parser("migrate", help="upgrade the database schema (Alembic head)")
    migrate.set_defaults(func=cmd_migrate)

    token = sub.add_parser("token", help="API tokens")
    token_sub = token.add_subparsers(dest="token_action", required=True)
    create = token_sub.add_parser("create", help="create a token and print it")
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True)
    create.set_defaults(func=cmd_token)

    demo = sub.add_parser("demo", help="generate synthetic settlements into the database")
    demo.add_argument("--structures", type=int, default=20_000)
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(func=cmd_demo)

    export = sub.add_parser("export", help="export a collection to a file (streamed)")
    export.add_argument("collection")
    export.add_argument(
        "--format", default="geojson", help="geojson, gpkg, fgb, shp (zip), kml or csv"
    )
    export.add_argument("-o", "--output", required=True)
    export.add_argument("--settlement", type=int, default=None)
    export.set_defaults(func=cmd_export)

    trace = sub.add_parser("trace", help="GPS traces")
    trace_sub = trace.add_subparsers(dest="trace_action", required=True)
    trace_up = trace_sub.add_parser(
        "upload",
        help="upload GPX files (gzip/zip too) with a progress bar",
        description="With --token (or MAKAZI_TOKEN) files go to the server at --url; "
        "without, straight into the database as --owner.",
    )
    trace_up.add_argument("files", nargs="+", metavar="FILE")
    trace_up.add_argument("--name", default=None)
    trace_up.add_argument(
        "--visibility", default="private", choices=["private", "community", "public"]
    )
    trace_up.add_argument("--settlement", type=int, default=None)
    trace_up.add_argument("--token", default=None, help="bearer token (or MAKAZI_TOKEN)")
    trace_up.add_argument("--url", default=None, help="server URL (or MAKAZI_URL)")
    trace_up.add_argument("--owner", default=None, help="owner for direct database uploads")
    trace_up.set_defaults(func=cmd_trace)

    from geo.analysis.cli import add_analyse_parser

    add_analyse_parser(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    from sqlalchemy.exc import OperationalError

    if isinstance(exc, OperationalError):
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        return f"cannot reach the database: {detail}"
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``makazi`` console script."""
    args = _parser().parse_args(argv)
    level = os.environ.get("MAKAZI_LOG_LEVEL", "info").upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO), format="%(message)s")
    if level != "DEBUG":
        logging.getLogger("alembic").setLevel(logging.WARNING)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if level == "DEBUG":
            log.exception("makazi failed")
        print(f"makazi: {_one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
