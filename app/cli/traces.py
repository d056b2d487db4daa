"""``makazi trace upload``: GPX files to the server or straight into the database."""

from __future__ import annotations

import argparse
import os
from typing import Any

from app.cli.common import (
    CommandError,
    database_url,
    load_settings,
    migrate,
)

__all__ = ["add_parsers"]


def cmd_trace(args: argparse.Namespace) -> int:
    from pathlib import Path

    from geo.traces.uploads import upload_files

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
        settings = load_settings()
        with database_url(settings) as db_url:
            migrate(db_url)
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


def add_parsers(sub: Any) -> None:
    """``trace upload``."""
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
