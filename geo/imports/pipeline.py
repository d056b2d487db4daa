"""One import from start to end: open the file, map, stage, check, merge, report.

The same function runs a synchronous ``POST /imports``, a queued job and
``makazi import``, always inside the caller's transaction: when it raises,
nothing it did is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import IO, Any

from sqlalchemy import Connection

from geo.core.db import set_statement_timeout
from geo.core.errors import BadRequest
from geo.core.settings import Settings
from geo.core.tables import households as households_table
from geo.imports.enumeration import EnumerationSource
from geo.imports.mapping import Mapping
from geo.imports.report import ImportRefused, Report
from geo.imports.sources import Limits, Reader, open_source
from geo.imports.staging import Parent, Stage
from geo.layers.households import HOUSEHOLD_PROPERTIES
from geo.layers.registry import COLLECTIONS, Collection

__all__ = ["IMPORTABLE", "ImportOptions", "collection_for", "limits_from", "run_import"]

#: The collections a file can be imported into.
IMPORTABLE = ("settlements", "structures", "facilities")
#: Households, as a form export's repeat group brings them (not a published collection).
HOUSEHOLDS = Collection(
    name="households",
    title="Households",
    description="Households enumerated in a structure",
    table=households_table,
    properties=HOUSEHOLD_PROPERTIES,
    geometry_types=(),
)


@dataclass(frozen=True)
class ImportOptions:
    """What to import and how (the form fields of ``POST /imports``, the CLI's flags)."""

    collection: str
    settlement_id: int | None = None
    mapping: Any = None
    partial: bool = False
    dry_run: bool = False
    source_crs: str | None = None
    layer: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The options as stored with a queued import."""
        return asdict(self)

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> ImportOptions:
        """Options stored by :meth:`as_json`."""
        return cls(**document)


def collection_for(name: str) -> Collection:
    """The importable collection called ``name`` (400 listing them otherwise)."""
    if name not in IMPORTABLE:
        raise BadRequest(
            f"collection must be one of {', '.join(IMPORTABLE)}; got {name!r}", field="collection"
        )
    return COLLECTIONS[name]


def limits_from(settings: Settings) -> Limits:
    """The reading limits the settings give."""
    return Limits(
        max_decompressed_bytes=settings.max_decompressed_bytes,
        max_archive_members=settings.max_archive_members,
        max_line_bytes=settings.import_max_line_kb * 1024,
        batch_size=settings.import_batch_size,
        timeout_ms=settings.import_timeout_ms,
    )


def run_import(
    conn: Connection,
    file: IO[bytes],
    *,
    filename: str | None,
    options: ImportOptions,
    limits: Limits,
    import_id: Callable[[], int] | int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Import ``file`` into ``options.collection`` on ``conn``; the report.

    Parameters
    ----------
    import_id
        The ``imports`` row the written features point to, or a function that
        creates it (called only when something is written).
    progress
        Called with (features read so far, features in the file) after each batch.

    Raises
    ------
    ImportRefused
        Some features are bad and ``partial`` is off (422; nothing written).
    BadRequest, UnreadableFile, TooLarge, UnsupportedMediaType
        The request or the file itself is wrong (nothing written).
    """
    collection = collection_for(options.collection)
    fixed: dict[str, Any] = {}
    if options.settlement_id is not None:
        if collection.find("settlement_id") is None:
            raise BadRequest(
                f"settlement_id does not apply to {collection.name}", field="settlement_id"
            )
        fixed["settlement_id"] = options.settlement_id
    mapping = Mapping.parse(options.mapping)
    set_statement_timeout(conn, limits.timeout_ms)
    source = open_source(
        file,
        filename=filename,
        limits=limits,
        layer=options.layer,
        source_crs=options.source_crs,
        geometry=mapping.geometry,
    )
    try:
        plan = mapping.resolve(
            collection, source.columns, fixed=fixed, shapefile=source.format == "Shapefile"
        )
        report = Report(
            layers=[layer.name for layer in source.layers],
            warnings=[{"index": None, "source_id": None, "reason": w} for w in source.warnings],
        )
        stage = Stage(conn, plan)
        stage.create()
        total = source.total
        done = 0

        def step(count: int) -> None:
            nonlocal done
            done += count
            if progress is not None:
                progress(done, max(total, done))

        stage.load(source.batches(limits.batch_size), step)
        stage.validate()
        stage.report(report)
        report.skipped = source.skipped
        if mapping.households is not None:
            return _with_households(
                conn, stage, source, mapping.households, report, options, limits, import_id
            )
        if options.dry_run:
            report.dry_run = True
            report.mapping = plan.describe()
            report.counts = stage.value_counts()
            report.imported = report.features - report.rejected
            stage.drop()
            return report
        if report.rejected and not options.partial:
            stage.drop()
            raise ImportRefused(report)
        target = import_id() if callable(import_id) else import_id
        stage.merge(report, target or 0)
        stage.drop()
        return report
    finally:
        source.close()


def _with_households(
    conn: Connection,
    stage: Stage,
    source: Reader,
    households: Mapping,
    report: Report,
    options: ImportOptions,
    limits: Limits,
    import_id: Callable[[], int] | int | None,
) -> Report:
    """Merge the structures, then the households of a form export's repeat group.

    The households point to their structures by source id, so the structures
    are merged first; a dry run does both inside a savepoint it rolls back.
    """
    if not isinstance(source, EnumerationSource) or households.repeat is None:
        raise BadRequest(
            "mapping.households needs a form export (a zip of ODK CSV files) and its 'repeat'",
            field="mapping",
        )
    if report.rejected and not options.partial and not options.dry_run:
        stage.drop()
        raise ImportRefused(report)
    savepoint = conn.begin_nested() if options.dry_run else None
    if options.dry_run:
        report.dry_run = True
        report.mapping = stage.plan.describe()
        report.counts = stage.value_counts()
    target = 0 if options.dry_run else (import_id() if callable(import_id) else import_id)
    stage.merge(report, target or 0)
    stage.drop()
    plan = households.resolve(HOUSEHOLDS, source.repeat_columns(households.repeat))
    rows = Stage(conn, plan, parent=Parent("PARENT_KEY", "structures", "structure_id"))
    rows.create()
    rows.load(source.repeat_batches(households.repeat, limits.batch_size))
    rows.validate()
    part = Report(layers=[households.repeat])
    rows.report(part)
    rows.merge(part, target or 0)
    rows.drop()
    report.households = part
    if savepoint is not None:
        savepoint.rollback()
    elif report.refused and not options.partial:
        raise ImportRefused(report)
    return report
