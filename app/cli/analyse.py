"""``makazi analyse …``: the planner analyses from the command line, printed as tables.

The command line runs with the database's own rights, so it prints raw counts
(as the ``admin`` role sees them); ``--role viewer`` shows what the public
API would return, with small counts suppressed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.cli.common import (
    CommandError,
    load_settings,
    open_engine,
    write_chunks,
)
from geo.core.auth import ROLES
from geo.core.db import Database

__all__ = ["HIDDEN", "add_parsers", "format_table", "read_geometry", "shown"]


class _Hidden:
    """A value the privacy rules hid: printed as "suppressed", never as a bound like "<5".

    A count may be hidden to protect a small neighbour (so that the small one
    cannot be worked out from a total), so its own size says nothing.
    """

    def __str__(self) -> str:
        return "suppressed"


HIDDEN = _Hidden()


def shown(result: dict[str, Any], name: str, value: Any) -> Any:
    """``value``, or :data:`HIDDEN` when it is null because ``result`` suppressed ``name``."""
    return HIDDEN if value is None and name in result.get("suppressed", ()) else value


def format_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table; null prints as "-" (nothing to show) and hidden values as such.

    >>> print(format_table(["use", "n"], [["residential", 1200], ["toilet", HIDDEN], ["x", None]]))
    use          n
    residential  1,200
    toilet       suppressed
    x            -
    """

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return str(value)
        if isinstance(value, int):
            return f"{value:,}"
        if isinstance(value, float):
            return f"{value:,.2f}"
        return str(value)

    body = [[cell(v) for v in row] for row in rows]
    widths = [max([len(str(h)), *(len(r[i]) for r in body)]) for i, h in enumerate(header)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for row in body:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def read_geometry(path: Path) -> Any:
    """A GeoJSON geometry from a GeoJSON file, or from any file GDAL reads (all features).

    Non-GeoJSON files are reprojected to EPSG:4326 and their features combined.
    """
    if not path.is_file():
        raise FileNotFoundError(f"--geometry: no file {path}")
    if path.suffix.lower() in {".json", ".geojson"}:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"--geometry: {path} is not GeoJSON ({exc})") from exc
    import geopandas as gpd
    import shapely

    frame = gpd.read_file(path)
    if frame.empty:
        raise ValueError(f"--geometry: {path} has no features")
    if frame.crs is not None:
        frame = frame.to_crs(4326)
    return shapely.geometry.mapping(shapely.force_2d(frame.geometry.union_all()))


@contextmanager
def _db() -> Iterator[tuple[Database, Any]]:
    import psycopg.errors
    from sqlalchemy.exc import DBAPIError

    settings = load_settings()
    with open_engine(settings) as engine:
        try:
            yield Database(engine), settings
        except DBAPIError as exc:
            if isinstance(exc.orig, psycopg.errors.QueryCanceled):
                raise CommandError(
                    f"the analysis took longer than {settings.analysis_timeout_ms} ms "
                    "(MAKAZI_ANALYSIS_TIMEOUT_MS); narrow it or raise the setting"
                ) from exc
            raise


def _print_counts(result: dict[str, Any], keys: Sequence[str]) -> None:
    print(format_table(["measure", "value"], [[k, shown(result, k, result.get(k))] for k in keys]))


def _print_breakdown(title: str, result: dict[str, Any], name: str) -> None:
    values: dict[str, Any] = result[name]
    if values:
        print()
        rows = [[key, shown(result, f"{name}.{key}", n)] for key, n in values.items()]
        print(format_table([title, "count"], rows))


def cmd_impact(args: argparse.Namespace) -> int:
    from geo.analysis.impact import ImpactRequest, impact, impact_features

    request = ImpactRequest(
        geometry=read_geometry(Path(args.geometry)),
        buffer_m=args.buffer_m,
        crs=args.crs,
        min_overlap=args.min_overlap,
    )
    with _db() as (db, settings):
        result = impact(db, request=request, settings=settings, role=args.role)
        if args.geojson:
            size = write_chunks(
                impact_features(db, request=request, settings=settings), args.geojson
            )
    _print_counts(result, ["buffer_m", "buffer_area_m2", "structures", "households", "people"])
    print()
    print(
        format_table(
            ["settlement", "id", "structures", "households", "people"],
            [
                [
                    e["name"] or "(outside any settlement)",
                    e["settlement_id"] or "-",
                    *(
                        shown(result, f"by_settlement[{i}].{field}", e[field])
                        for field in ("structures", "households", "people")
                    ),
                ]
                for i, e in enumerate(result["by_settlement"])
            ],
        )
    )
    _print_breakdown("use", result, "structures_by_use")
    _print_breakdown("facility type", result, "facilities_by_type")
    if args.geojson:
        print(f"\nwrote the affected structures to {args.geojson} ({size:,} bytes)")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from geo.analysis.summary import summary

    with _db() as (db, settings):
        result = summary(db, settlement_id=args.settlement, settings=settings, role=args.role)
    print(f"{result['name']} ({result['status']})\n")
    keys = [k for k in result if k not in {"id", "name", "status", "basis", "suppressed"}]
    scalar = [k for k in keys if not isinstance(result[k], dict)]
    print(
        format_table(
            ["measure", "value", "basis"],
            [[k, shown(result, k, result[k]), result["basis"].get(k, "")] for k in scalar],
        )
    )
    _print_breakdown("use", result, "structures_by_use")
    rows = [
        [kind, condition, shown(result, f"facilities_by_condition.{kind}.{condition}", n)]
        for kind, conditions in result["facilities_by_condition"].items()
        for condition, n in conditions.items()
    ]
    if rows:
        print()
        print(format_table(["facility type", "condition", "count"], rows))
    return 0


def cmd_access(args: argparse.Namespace) -> int:
    from geo.analysis.access import access, access_features

    options = {
        "facility_type": args.facility_type,
        "max_distance_m": args.max_distance_m,
        "settlement_id": args.settlement,
    }
    with _db() as (db, settings):
        result = access(db, settings=settings, role=args.role, **options)
        if args.geojson:
            write_chunks(access_features(db, settings=settings, **options), args.geojson)
    _print_counts(result, [k for k in result if k != "suppressed"])
    if args.geojson:
        print(f"\nwrote the structures beyond reach to {args.geojson}")
    return 0


def cmd_overlaps(args: argparse.Namespace) -> int:
    from geo.analysis.overlaps import overlaps

    with _db() as (db, settings):
        data = overlaps(db, settlement_id=args.settlement, settings=settings)
    collection = json.loads(data)
    rows = [
        [
            f"{p['settlement_a_name']} ({p['settlement_a']})",
            f"{p['settlement_b_name']} ({p['settlement_b']})",
            float(p["overlap_m2"]),
            float(p["overlap_ha"]),
        ]
        for p in (f["properties"] for f in collection["features"])
    ]
    print(format_table(["settlement a", "settlement b", "overlap m²", "overlap ha"], rows))
    if args.geojson:
        args.geojson.write_bytes(data)
        print(f"\nwrote {len(rows)} overlaps to {args.geojson}")
    return 0


def cmd_density(args: argparse.Namespace) -> int:
    from geo.analysis.density import density

    with _db() as (db, settings):
        data = density(
            db, settlement_id=args.settlement, cell_m=args.cell_m, settings=settings, role=args.role
        )
    collection = json.loads(data)
    rows = [
        [p["i"], p["j"], p["structures"], p["households"], p["people"], p["structures_per_ha"]]
        for p in (f["properties"] for f in collection["features"])
    ]
    print(format_table(["i", "j", "structures", "households", "people", "structures/ha"], rows))
    if args.geojson:
        args.geojson.write_bytes(data)
        print(f"\nwrote {len(rows)} cells to {args.geojson}")
    return 0


def add_parsers(sub: Any) -> None:
    """Add ``analyse`` and its subcommands to the ``makazi`` parser's subparsers."""
    analyse = sub.add_parser("analyse", help="planner analyses (impact, access, density, ...)")
    which = analyse.add_subparsers(dest="analysis", required=True)

    def common(parser: argparse.ArgumentParser, *, geojson: bool = True) -> None:
        parser.add_argument(
            "--role",
            choices=ROLES,
            default="admin",
            help="whose view to print (default admin: raw counts; viewer: suppressed)",
        )
        if geojson:
            parser.add_argument("--geojson", type=Path, metavar="OUT", help="also write GeoJSON")

    impact = which.add_parser("impact", help="what a buffered line or polygon takes")
    impact.add_argument(
        "--geometry", required=True, metavar="FILE", help="GeoJSON (or any GDAL vector file)"
    )
    impact.add_argument("--buffer-m", type=float, help="buffer in metres")
    impact.add_argument("--crs", help="CRS of a GeoJSON file's coordinates (default CRS84)")
    impact.add_argument(
        "--min-overlap",
        type=float,
        default=0.0,
        help="fraction of a footprint that must be inside (0..1)",
    )
    common(impact)
    impact.set_defaults(func=cmd_impact)

    summary = which.add_parser("summary", help="the profile of one settlement")
    summary.add_argument("--settlement", type=int, required=True, metavar="ID")
    common(summary, geojson=False)
    summary.set_defaults(func=cmd_summary)

    access = which.add_parser("access", help="structures beyond reach of a facility type")
    access.add_argument("--facility-type", required=True)
    access.add_argument("--max-distance-m", type=float, required=True)
    access.add_argument("--settlement", type=int, metavar="ID")
    common(access)
    access.set_defaults(func=cmd_access)

    overlaps = which.add_parser("overlaps", help="overlapping settlement boundaries")
    overlaps.add_argument("--settlement", type=int, metavar="ID")
    overlaps.add_argument("--geojson", type=Path, metavar="OUT", help="also write GeoJSON")
    overlaps.set_defaults(func=cmd_overlaps)

    density = which.add_parser("density", help="structure density grid over a settlement")
    density.add_argument("--settlement", type=int, required=True, metavar="ID")
    density.add_argument("--cell-m", type=float, default=100.0)
    common(density)
    density.set_defaults(func=cmd_density)
