"""``makazi db …`` and ``makazi migrate``: the embedded cluster and the schema."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from app.cli.common import (
    CommandError,
    cluster_of,
    database_url,
    load_settings,
    migrate,
    start_cluster,
)

__all__ = ["add_parsers"]


def cmd_db(args: argparse.Namespace) -> int:
    from geo.core.cluster import ensure_postgis

    settings = load_settings()
    if args.action == "ensure":
        pg = ensure_postgis(install=True)
        print(f"PostgreSQL {pg.major} with PostGIS: {pg.bin_dir}")
        return 0
    if settings.database_url and args.action != "url":
        raise CommandError(
            "MAKAZI_DATABASE_URL is set: this server is not managed by makazi (unset it to use "
            "the embedded cluster)"
        )
    cluster = cluster_of(settings)
    if args.action == "start":
        ensure_postgis(install=os.geteuid() == 0, quiet=True)
        started = start_cluster(cluster)
        print(("started" if started else "already running") + f" on port {cluster.port}")
    elif args.action == "stop":
        print("stopped" if cluster.stop() else "not running")
    elif args.action == "status":
        status = cluster.status()
        print(json.dumps(status))
        return 0 if status["running"] else 3
    elif args.action == "url":
        if settings.database_url:
            from geo.core.db import normalise_url

            print(normalise_url(settings.database_url))
        elif not cluster.initialised:
            raise CommandError(
                f"no database in {cluster.data_dir} yet; run `makazi db start` "
                "(or set MAKAZI_DATA_DIR to the one your server uses)"
            )
        else:
            print(cluster.url())
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings()
    with database_url(settings) as url:
        migrate(url)
    print("database is at the newest revision")
    return 0


def add_parsers(sub: Any) -> None:
    """``db`` and ``migrate``."""
    db = sub.add_parser("db", help="the embedded PostgreSQL/PostGIS cluster")
    db.add_argument("action", choices=["start", "stop", "status", "url", "ensure"])
    db.set_defaults(func=cmd_db)

    upgrade = sub.add_parser("migrate", help="upgrade the database schema (Alembic head)")
    upgrade.set_defaults(func=cmd_migrate)
