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
    output_file,
    start_cluster,
)
from geo.core.cluster import EmbeddedCluster
from geo.core.standby import embedded_replicas, start_replicas, stop_replicas

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
    if args.action == "replica":
        return _replica(args, cluster)
    if args.action == "start":
        ensure_postgis(install=os.geteuid() == 0, quiet=True)
        started = start_cluster(cluster)
        print(("started" if started else "already running") + f" on port {cluster.port}")
        for replica in start_replicas(cluster):
            print(f"started replica {replica.number} on port {replica.port}")
    elif args.action == "stop":
        stop_replicas(cluster)
        print("stopped" if cluster.stop() else "not running")
    elif args.action == "status":
        status = cluster.status()
        status["replicas"] = [replica.status() for replica in embedded_replicas(cluster)]
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


def _replica(args: argparse.Namespace, cluster: EmbeddedCluster) -> int:
    """``db replica add|list|remove N``: streaming replicas of the embedded cluster."""
    from geo.core.standby import add_replica, remove_replica

    what = args.file
    if what == "add":
        replica = add_replica(cluster)
        print(replica.url())
    elif what == "list":
        for replica in embedded_replicas(cluster):
            lag = replica.lag_s()
            state = "running" if replica.running() else "stopped"
            shown = "-" if lag is None else ("inf" if lag == float("inf") else f"{lag:.1f}")
            print(f"{replica.number} {replica.url()} {state} {shown}")
    elif what == "remove":
        if args.number is None or not args.number.isdigit():
            raise CommandError("db replica remove needs the replica's number N (see replica list)")
        remove_replica(cluster, int(args.number))
        print(f"removed replica {args.number}")
    else:
        raise CommandError("db replica needs one of: add, list, remove N")
    return 0


def _backup(args: argparse.Namespace, settings: Any) -> int:
    """``db dump -o FILE`` / ``db restore FILE``."""
    from pathlib import Path

    from geo.core.backup import dump, restore

    if args.action == "dump":
        if not args.output:
            raise CommandError("db dump needs -o FILE")
        output = output_file(args.output)
        with database_url(settings) as url:
            size = dump(url, output)
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
        "action",
        choices=["start", "stop", "status", "url", "ensure", "dump", "restore", "replica"],
    )
    db.add_argument(
        "file", nargs="?", help="restore: the dump file to restore; replica: add, list or remove"
    )
    db.add_argument("number", nargs="?", help="replica remove: the replica's number N")
    db.add_argument("-o", "--output", help="dump: the file to write (pg_dump custom format)")
    db.set_defaults(func=cmd_db)

    upgrade = sub.add_parser("migrate", help="upgrade the database schema (Alembic head)")
    upgrade.set_defaults(func=cmd_migrate)
