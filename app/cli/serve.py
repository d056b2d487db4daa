"""``makazi serve``: the HTTP service, on the embedded or a configured PostGIS."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from app.cli.common import (
    CommandError,
    cluster_of,
    database_url,
    engine_for,
    load_settings,
    migrate,
)

if TYPE_CHECKING:
    from geo.core.settings import Settings

__all__ = ["add_parsers"]


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


@contextlib.contextmanager
def embedded_replicas_serving(settings: Settings) -> Iterator[None]:
    """Start the embedded cluster's replicas for the server's life, and read from them.

    Only with the embedded cluster (no ``MAKAZI_DATABASE_URL``).  When
    ``MAKAZI_DATABASE_REPLICA_URLS`` is unset, it is set to the embedded replicas'
    URLs for the server's workers.  Replicas this call started are stopped after.
    """
    from geo.core.standby import embedded_replicas, start_replicas, stop_replicas

    if settings.database_url:
        yield
        return
    primary = cluster_of(settings)
    started = start_replicas(primary)
    replicas = embedded_replicas(primary)
    if replicas and not settings.database_replica_urls:
        os.environ["MAKAZI_DATABASE_REPLICA_URLS"] = ",".join(r.url() for r in replicas)
        print(f"reading from {len(replicas)} embedded replica(s)", flush=True)
    try:
        yield
    finally:
        stop_replicas(primary, only=started)


MAX_DEFAULT_WORKERS = 4
"""Default workers at most: each holds up to 2 x ``pool_size`` connections (of 100)."""


def worker_count(requested: int | None, settings: Settings) -> int:
    """Worker processes to run: ``--workers``, else ``MAKAZI_WORKERS``, else one per core.

    One Python process uses one core, so a single worker leaves the others to
    PostgreSQL alone; the default is the cores this process may run on, at most
    :data:`MAX_DEFAULT_WORKERS`.
    """
    if requested:
        return requested
    if settings.workers:
        return settings.workers
    return max(1, min(len(os.sched_getaffinity(0)), MAX_DEFAULT_WORKERS))


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from geo.demo.generator import generate
    from geo.demo.loader import is_empty, load

    settings = load_settings()
    if _port_in_use(args.host, args.port):
        raise CommandError(f"port {args.port} on {args.host} is in use; pick another with --port")
    with database_url(settings) as url, embedded_replicas_serving(settings):
        migrate(url)
        if args.demo:
            engine = engine_for(settings, url)
            with engine.begin() as conn:
                if is_empty(conn):
                    print(f"loading demo data ({settings.demo_structures} structures)...")
                    counts = load(conn, generate(settings.demo_structures, settings.demo_seed))
                    print(", ".join(f"{v} {k}" for k, v in counts.items()))
            engine.dispose()
        workers = worker_count(args.workers, settings)
        print(
            f"Makazi on http://{args.host}:{args.port}/  (map: /map, API: /api; "
            f"{workers} worker{'s' if workers > 1 else ''})",
            flush=True,
        )
        # uvicorn re-raises the signal that stopped it once it has shut down; make SIGTERM
        # unwind like Ctrl-C so the embedded database is stopped on the way out.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=workers,
            log_level=settings.log_level,
            proxy_headers=True,
            # in-flight requests (a slow download, an upload that stalled) get this long to
            # finish on Ctrl-C or SIGTERM; then they are cut, so the database is always stopped
            timeout_graceful_shutdown=settings.shutdown_timeout_s,
        )
    return 0


def add_parsers(sub: Any) -> None:
    """``serve``."""
    serve = sub.add_parser("serve", help="run the HTTP service (starts the embedded PostGIS)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: MAKAZI_WORKERS, else one per CPU core, at most 4)",
    )
    serve.add_argument("--demo", action="store_true", help="load demo data into an empty DB")
    serve.set_defaults(func=cmd_serve)
