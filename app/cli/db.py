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
    if args.action in ("dump", "restore"):
        return _backup(args, settings)
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


def _backup(args: argparse.Namespace, settings: Any) -> int:
    """``db dump -o FILE`` / ``db restore FILE``."""
    from pathlib import Path

    from geo.core.backup import dump, restore

    if args.action == "dump":
        if not args.output:
            raise CommandError("db dump needs -o FILE")
        with database_url(settings) as url:
            size = dump(url, Path(args.output))
        print(f"wrote {args.output} ({size:,} bytes; pg_dump custom format)")
        return 0
    if not args.file:
        raise CommandError("db restore needs the dump FILE")
    with database_url(settings) as url:
        restore(url, Path(args.file))
        migrate(url)  # a dump from an older Makazi is brought to this version's schema
    print(f"restored {args.file}")
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
    db.add_argument(
        "action", choices=["start", "stop", "status", "url", "ensure", "dump", "restore"]
    )
    db.add_argument("file", nargs="?", help="restore: the dump file to restore")
    db.add_argument("-o", "--output", help="dump: the file to write (pg_dump custom format)")
    db.set_defaults(func=cmd_db)

    upgrade = sub.add_parser("migrate", help="upgrade the database schema (Alembic head)")
    upgrade.set_defaults(func=cmd_migrate)
