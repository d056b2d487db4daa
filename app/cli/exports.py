"""``makazi export``: a collection to a file, streamed."""

from __future__ import annotations

import argparse
import os
from typing import Any

from app.cli.common import (
    CommandError,
    load_settings,
    open_engine,
    output_file,
    write_chunks,
)

__all__ = ["add_parsers"]


def cmd_export(args: argparse.Namespace) -> int:
    from geo.analysis.common import settlement_name
    from geo.core.auth import Principal
    from geo.core.db import set_statement_timeout
    from geo.exports.query import ExportRows
    from geo.exports.stream import export_format, stream_export
    from geo.layers.registry import COLLECTIONS

    collection = COLLECTIONS.get(args.collection)
    if collection is None:
        raise CommandError(
            f"unknown collection {args.collection!r}; one of {', '.join(COLLECTIONS)}"
        )
    fmt = export_format(args.format)
    settings = load_settings()
    everyone = Principal(name="makazi-cli", role="admin", token_id=0)
    output = output_file(args.output)
    partial = output.with_name(f".{output.name}.part")
    try:
        with open_engine(settings, migrated=False) as engine, engine.connect() as conn:
            set_statement_timeout(conn, settings.export_timeout_ms)
            if args.settlement is not None:
                settlement_name(conn, args.settlement, field="--settlement")
            rows = ExportRows(collection, everyone, args.settlement)
            written = write_chunks(stream_export(conn, rows, fmt), partial)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    print(f"wrote {written:,} bytes to {output}")
    return 0


def add_parsers(sub: Any) -> None:
    """``export``."""
    export = sub.add_parser("export", help="export a collection to a file (streamed)")
    export.add_argument("collection")
    export.add_argument(
        "--format", default="geojson", help="geojson, gpkg, fgb, shp (zip), kml or csv"
    )
    export.add_argument("-o", "--output", required=True)
    export.add_argument("--settlement", type=int, default=None)
    export.set_defaults(func=cmd_export)
