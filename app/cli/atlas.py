"""``makazi atlas``: a settlement's printable atlas to a PDF file."""

from __future__ import annotations

import argparse
from typing import Any

from app.cli.common import CommandError, load_settings, open_engine, output_file

__all__ = ["add_parsers"]


def cmd_atlas(args: argparse.Namespace) -> int:
    from geo.atlas.build import build_atlas
    from geo.atlas.pdf import AtlasRequest
    from geo.core.auth import ROLES
    from geo.core.db import Database
    from geo.layers.as_of import as_of_moment

    if args.role not in ROLES:
        raise CommandError(f"--role must be one of {', '.join(ROLES)}; got {args.role!r}")
    request = AtlasRequest(
        role=args.role,
        verified=args.verified,
        as_of=as_of_moment(args.as_of, field="--as-of"),
        since=as_of_moment(args.since, field="--since", end_of_day=False),
        paper=args.paper,
    )
    settings = load_settings()
    output = output_file(args.output)
    partial = output.with_name(output.name + ".partial")
    try:
        with open_engine(settings, migrated=False) as engine, partial.open("wb") as out:
            pages = build_atlas(
                Database(engine), out, settlement_id=args.id, settings=settings, request=request
            )
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    print(f"wrote {pages} pages to {args.output}")
    return 0


def add_parsers(sub: Any) -> None:
    """``atlas``."""
    atlas = sub.add_parser("atlas", help="print a settlement's atlas (cover, maps, sheets) to PDF")
    atlas.add_argument("id", type=int, help="settlement id")
    atlas.add_argument("-o", "--output", required=True, help="PDF file to write")
    atlas.add_argument("--as-of", default=None, help="the data as of a past date (YYYY-MM-DD)")
    atlas.add_argument("--since", default=None, help="add a page of changes since this date")
    atlas.add_argument("--verified", action="store_true", help="count verified records only")
    atlas.add_argument("--paper", choices=("A4", "A3"), default="A4")
    atlas.add_argument(
        "--role", default="planner", help="the role the copy is for (suppression; default planner)"
    )
    atlas.set_defaults(func=cmd_atlas)
