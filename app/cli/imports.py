"""``makazi import FILE --collection C``: bulk import straight into the database.

The same pipeline as ``POST /imports`` (:mod:`geo.imports`), run as ``--as``
(default ``$USER``) with a progress bar on stderr.  ``--dry-run`` prints the
mapping it would use, the counts per target value and the first errors as JSON,
and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from app.cli.common import CommandError, load_settings, open_engine

__all__ = ["add_parsers"]

SHOWN_ERRORS = 10


def cmd_import(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from geo.core.db import act_as
    from geo.core.errors import InsufficientStorage, MakaziError
    from geo.core.uploads import no_space, spool_stream, use_spool_dir
    from geo.imports.jobs import import_now
    from geo.imports.pipeline import ImportOptions, limits_from
    from geo.imports.report import ImportRefused

    path = Path(args.file)
    if not path.is_file():
        raise CommandError(f"no such file: {path}")
    mapping: Any = None
    if args.mapping:
        try:
            mapping = json.loads(Path(args.mapping).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read the mapping {args.mapping}: {exc}") from exc
    options = ImportOptions(
        collection=args.collection,
        settlement_id=args.settlement,
        mapping=mapping,
        partial=args.partial,
        dry_run=args.dry_run,
        source_crs=args.source_crs,
        layer=args.layer,
    )
    settings = load_settings()
    use_spool_dir(settings.spool_dir)  # the copy, unpacked archives: where the server stages
    actor = args.actor or os.environ.get("USER") or "cli"
    try:
        with path.open("rb") as handle:
            body = spool_stream(handle, limit=max(settings.max_upload_bytes, path.stat().st_size))
    except InsufficientStorage as exc:
        raise _disk_full(path) from exc
    bar = tqdm(total=0, unit=" features", file=sys.stderr, disable=args.quiet, leave=False)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        with open_engine(settings) as engine, engine.begin() as conn:
            act_as(conn, actor)
            report, import_id = import_now(
                conn,
                owner=actor,
                options=options,
                body=body,
                filename=path.name,
                limits=limits_from(settings),
                progress=progress,
            )
    except ImportRefused as exc:
        bar.close()
        _print_errors(exc.report.errors)
        raise CommandError(exc.detail) from exc
    except MakaziError as exc:
        bar.close()
        raise CommandError(exc.detail) from exc
    except OSError as exc:
        bar.close()
        if no_space(exc):
            raise _disk_full(path) from exc
        raise
    finally:
        body.close()
    bar.close()
    if args.dry_run:
        print(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    else:
        _print_errors(report.errors)
    print(report.summary() + (f" (import {import_id})" if import_id else ""))
    return 0


def _disk_full(path: Path) -> CommandError:
    """The error for a staging folder that filled up while importing ``path``."""
    import tempfile

    return CommandError(
        f"no space left on device in {tempfile.gettempdir()} to stage {path.name} (insufficient "
        "storage); nothing was imported: free space there or point MAKAZI_SPOOL_DIR at a "
        "larger disk"
    )


def _print_errors(errors: list[dict[str, Any]]) -> None:
    for error in errors[:SHOWN_ERRORS]:
        print(
            f"  feature {error['index']} ({error['source_id']}): {error['reason']}", file=sys.stderr
        )
    if len(errors) > SHOWN_ERRORS:
        print(f"  ... and {len(errors) - SHOWN_ERRORS} more", file=sys.stderr)


def add_parsers(sub: Any) -> None:
    """``import``."""
    parser = sub.add_parser(
        "import",
        help="bulk import a vector file (GeoJSON, GeoPackage, zipped Shapefile, KML/KMZ, "
        "FlatGeobuf, CSV)",
        description="Import FILE into a collection, all or nothing unless --partial. "
        "Fields are mapped by --mapping (JSON: fields, values, defaults) and by guesses "
        "from the column names; --dry-run shows the mapping and writes nothing.",
    )
    parser.add_argument("file", metavar="FILE")
    parser.add_argument(
        "--collection", required=True, choices=["settlements", "structures", "facilities"]
    )
    parser.add_argument("--settlement", type=int, default=None, help="settlement id for all")
    parser.add_argument("--mapping", default=None, metavar="FILE", help="mapping JSON file")
    parser.add_argument("--partial", action="store_true", help="import the valid features")
    parser.add_argument("--dry-run", action="store_true", help="report only; write nothing")
    parser.add_argument("--source-crs", default=None, metavar="EPSG", help="e.g. 21037")
    parser.add_argument("--layer", default=None, help="the layer of a multi-layer file")
    parser.add_argument("--as", dest="actor", default=None, help="who the history names")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_import)
