"""Staging, validation and merge of an import, set-based in PostgreSQL.

Features are streamed with ``COPY`` into a temporary table (one text column per
field, the geometry as EPSG:4326), checked there with a few ``UPDATE``s that
each set a feature's ``reason`` (the first thing wrong with it), and merged into
the layer with one ``INSERT ... SELECT`` and one ``UPDATE ... FROM``.  Versions and the
history rows of updates come from the layer's triggers, exactly as for writes
through the API; the ``create`` rows of new features are written by the insert
itself (:mod:`geo.imports.history`, the same content at a fraction of the cost).  Memory stays flat:
Python only holds one batch at a time.

The checks, in order: geometry type (per collection, from the registry);
validity (``ST_MakeValid``, reported as a warning; rejected when the repair
changes the geometry's dimension or yields a type the collection does not
take); every field against its registry :class:`~geo.layers.registry.Property`
(required, enum, whole number, bounds, length); the settlement named exists;
duplicate source ids; for structures, duplicate structure numbers per
settlement within the file and against the database.
"""

# ruff: noqa: S608 -- SQL text here is built only from registry names and the stage's own columns
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from geo.imports.history import insert_audited
from geo.imports.mapping import Plan
from geo.imports.report import MAX_LISTED, Report
from geo.imports.sources import Batch, content_id, text_value
from geo.layers.registry import Collection, Property

__all__ = ["Parent", "Stage"]

STAGE = "import_stage"
Progress = Callable[[int], None]


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _column(prop: Property) -> str:
    return f"p_{prop.name}"


def _cast(prop: Property, alias: str = "s") -> str:
    """SQL turning the staged text of ``prop`` into the column's type."""
    column = f"{alias}.{_column(prop)}"
    if prop.kind == "integer":
        return f"({column})::numeric::bigint"
    if prop.kind == "number":
        return f"({column})::double precision"
    if prop.kind == "string-array":
        return f"ARRAY(SELECT jsonb_array_elements_text(({column})::jsonb))"
    return column


def _check(prop: Property) -> list[tuple[str, str]]:
    """(condition, reason) pairs in SQL for one field, first match wins."""
    column = _column(prop)
    name = prop.name
    checks: list[tuple[str, str]] = []
    if prop.required:
        checks.append(
            (
                f"{column} IS NULL",
                _literal(
                    f"{name} is required: map a column to it (mapping.fields.{name}) "
                    f"or give mapping.defaults.{name}"
                ),
            )
        )
    if prop.enum is not None:
        allowed = ", ".join(_literal(v) for v in prop.enum)
        checks.append(
            (
                f"{column} NOT IN ({allowed})",
                _literal(f"{name} must be one of {', '.join(prop.enum)}; got ")
                + f" || quote_literal({column}) || "
                + _literal(f" (map it with mapping.values.{name})"),
            )
        )
    if prop.kind == "integer":
        checks.append(
            (
                f"{column} !~ '^\\s*[+-]?[0-9]{{1,15}}(\\.0*)?\\s*$'",
                _literal(f"{name} must be a whole number; got ") + f" || quote_literal({column})",
            )
        )
    if prop.kind == "number":
        checks.append(
            (
                f"{column} !~ '^\\s*[+-]?[0-9]{{1,15}}(\\.[0-9]*)?\\s*$'",
                _literal(f"{name} must be a number; got ") + f" || quote_literal({column})",
            )
        )
    if prop.minimum is not None and prop.kind in {"integer", "number"}:
        checks.append(
            (
                f"{column}::numeric < {prop.minimum}",
                _literal(f"{name} must be at least {prop.minimum:g}; got ") + f" || {column}",
            )
        )
    if prop.maximum is not None and prop.kind in {"integer", "number"}:
        checks.append(
            (
                f"{column}::numeric > {prop.maximum}",
                _literal(f"{name} must be at most {prop.maximum:g}; got ") + f" || {column}",
            )
        )
    if prop.kind in {"string", "string-array"}:
        checks.append(
            (
                f"length({column}) > {prop.max_length}",
                _literal(f"{name} is longer than {prop.max_length} characters"),
            )
        )
    return checks


@dataclass(frozen=True)
class Parent:
    """How staged rows point to rows already imported (households to their structure).

    Attributes
    ----------
    column
        The source column holding the parent's source id (``PARENT_KEY``).
    table
        The parent table, matched on its ``source_id``.
    field
        Our column that takes the parent's id (``structure_id``).
    """

    column: str
    table: str
    field: str


@dataclass
class Stage:
    """The temporary table of one import on one connection."""

    conn: Connection
    plan: Plan
    parent: Parent | None = None

    @property
    def collection(self) -> Collection:
        """The collection imported into."""
        return self.plan.collection

    @property
    def properties(self) -> tuple[Property, ...]:
        """The writable fields staged."""
        return self.plan.properties

    def create(self) -> None:
        """(Re)create the staging table, dropped at commit."""
        fields = ", ".join(f"{_column(p)} text" for p in self.properties)
        self.conn.execute(text(f"DROP TABLE IF EXISTS {STAGE}"))
        self.conn.execute(
            text(
                f"""
                CREATE TEMP TABLE {STAGE} (
                    seq bigint PRIMARY KEY, layer text, idx integer, source_id text,
                    geom geometry, reason text, warning text, target_id bigint, action text,
                    parent_key text, parent_id bigint, {fields}
                ) ON COMMIT DROP
                """
            )
        )

    def drop(self) -> None:
        """Drop the staging table now (a dry run, or a test's long transaction)."""
        self.conn.execute(text(f"DROP TABLE IF EXISTS {STAGE}"))

    def load(self, batches: Iterable[Batch], progress: Progress | None = None) -> int:
        """COPY every batch into the stage; the number of features staged."""
        names = [_column(p) for p in self.properties]
        columns = ", ".join(
            ["seq", "layer", "idx", "source_id", "geom", "reason", "parent_key", *names]
        )
        parent = self.parent.column if self.parent is not None else None
        raw = self.conn.connection.driver_connection
        assert raw is not None
        seq = 0
        id_column = self.plan.source_id
        with raw.cursor() as cursor:
            for batch in batches:
                with cursor.copy(f"COPY {STAGE} ({columns}) FROM STDIN") as copy:
                    for i, row in enumerate(batch.rows):
                        values = self.plan.apply(row)
                        wkb = batch.wkb[i]
                        if id_column is not None:
                            source_id = text_value(row.get(id_column))
                        else:
                            source_id = batch.source_ids[i]
                        copy.write_row(
                            (
                                seq,
                                batch.layer,
                                batch.indexes[i],
                                source_id or content_id(wkb, row),
                                wkb,
                                batch.problems[i],
                                text_value(row.get(parent)) if parent else None,
                                *(values[p.name] for p in self.properties),
                            )
                        )
                        seq += 1
                if progress is not None:
                    progress(len(batch.rows))
        self.conn.execute(text(f"ANALYZE {STAGE}"))
        return seq

    def _reject(self, condition: str, reason: str, source: str = "") -> None:
        self.conn.execute(
            text(
                f"UPDATE {STAGE} s SET reason = {reason} {source} "
                f"WHERE s.reason IS NULL AND ({condition})"
            )
        )

    def validate(self) -> None:
        """Set ``reason`` on every feature that cannot be imported; repair what can be."""
        if self.collection.geometry_types:
            self._geometries()
        if self.parent is not None:
            self._parents(self.parent)
        self._fields()

    def _parents(self, parent: Parent) -> None:
        self.conn.execute(
            text(
                f"""
                UPDATE {STAGE} s SET parent_id = t.id FROM {parent.table} t
                WHERE t.source_id = s.parent_key AND t.deleted_at IS NULL
                """
            )
        )
        self._reject(
            "s.parent_id IS NULL",
            f"'its parent (' || coalesce(quote_literal(s.parent_key), 'no {parent.column}') "
            f"|| ') is not among the {parent.table} imported'",
        )

    def _geometries(self) -> None:
        collection = self.collection
        allowed = ", ".join(_literal(t) for t in collection.geometry_types)
        listed = ", ".join(collection.geometry_types)
        self._reject(
            f"GeometryType(s.geom) NOT IN ({allowed})",
            _literal(f"{collection.name} take {listed} geometries, not ")
            + " || GeometryType(s.geom)",
        )
        repair = (
            "CASE WHEN ST_Dimension(s.geom) = 2 "
            "THEN ST_CollectionExtract(ST_MakeValid(s.geom, 'method=structure'), 3) "
            "ELSE ST_MakeValid(s.geom) END"
        )
        self.conn.execute(
            text(
                f"""
                UPDATE {STAGE} s
                SET geom = CASE WHEN ok THEN fixed ELSE s.geom END,
                    warning = CASE WHEN ok THEN 'geometry was not valid (' || why
                                   || '); repaired with ST_MakeValid' END,
                    reason = CASE WHEN NOT ok THEN 'geometry is not valid (' || why
                                  || ') and repairing it would make it '
                                  || coalesce(GeometryType(fixed), 'nothing') END
                FROM (
                    SELECT seq, fixed, ST_IsValidReason(geom) AS why,
                           coalesce(NOT ST_IsEmpty(fixed) AND ST_IsValid(fixed)
                                    AND ST_Dimension(fixed) = ST_Dimension(geom)
                                    AND GeometryType(fixed) IN ({allowed}), false) AS ok
                    FROM (SELECT seq, geom, {repair} AS fixed FROM {STAGE} s
                          WHERE s.reason IS NULL AND NOT ST_IsValid(s.geom)) r
                ) v
                WHERE v.seq = s.seq
                """
            )
        )

    def _fields(self) -> None:
        collection = self.collection
        # every field's checks in one pass: a CASE takes them in order, the first match wins
        cases = []
        for prop in self.properties:
            for condition, reason in _check(prop):
                if not condition.endswith("IS NULL"):
                    condition = f"{_column(prop)} IS NOT NULL AND {condition}"
                cases.append(f"WHEN {condition} THEN {reason}")
        if cases:
            self.conn.execute(
                text(
                    f"""
                    UPDATE {STAGE} s SET reason = c.reason
                    FROM (SELECT seq, CASE {" ".join(cases)} END AS reason
                          FROM {STAGE} WHERE reason IS NULL) c
                    WHERE c.seq = s.seq AND c.reason IS NOT NULL
                    """
                )
            )
        if collection.find("settlement_id") is not None:
            self._settlements()
        self._reject(
            "s.seq > d.first AND d.source_id = s.source_id",
            "CASE WHEN s.source_id LIKE 'sha256:%' THEN 'the same feature (geometry and "
            "attributes) appears again' ELSE 'source id ' || quote_literal(s.source_id) "
            "|| ' appears again' END || ' (first at index ' || d.first_idx || ')'",
            f"""FROM (SELECT source_id, min(seq) AS first,
                             (array_agg(idx ORDER BY seq))[1] AS first_idx
                      FROM {STAGE} WHERE reason IS NULL GROUP BY source_id
                      HAVING count(*) > 1) d""",
        )
        if collection.find("structure_number") is not None:
            self._structure_numbers()

    def _settlements(self) -> None:
        """Settlements named must exist; unnamed ones are derived (as the trigger does)."""
        self._reject(
            "s.p_settlement_id IS NOT NULL AND s.p_settlement_id ~ '^\\s*[0-9]{1,15}\\s*$' "
            "AND NOT EXISTS (SELECT 1 FROM settlements t WHERE t.id = s.p_settlement_id::bigint "
            "AND t.deleted_at IS NULL)",
            "'settlement_id ' || s.p_settlement_id || ' names no existing settlement'",
        )
        self.conn.execute(
            text(
                f"""
                UPDATE {STAGE} s SET p_settlement_id = (
                    SELECT t.id FROM settlements t
                    WHERE t.deleted_at IS NULL AND ST_Intersects(t.geom, ST_PointOnSurface(s.geom))
                    ORDER BY ST_Area(t.geom), t.id LIMIT 1)::text
                WHERE s.reason IS NULL AND s.p_settlement_id IS NULL
                """
            )
        )

    def _structure_numbers(self) -> None:
        self._reject(
            "s.seq > d.first AND d.p_settlement_id = s.p_settlement_id "
            "AND d.p_structure_number = s.p_structure_number",
            "'structure number ' || quote_literal(s.p_structure_number) || ' is used twice in "
            "settlement ' || s.p_settlement_id || ' in this file (first at index ' "
            "|| d.first_idx || ')'",
            f"""FROM (SELECT p_settlement_id, p_structure_number, min(seq) AS first,
                             (array_agg(idx ORDER BY seq))[1] AS first_idx
                      FROM {STAGE}
                      WHERE reason IS NULL AND p_structure_number IS NOT NULL
                        AND p_settlement_id IS NOT NULL
                      GROUP BY 1, 2 HAVING count(*) > 1) d""",
        )
        self._reject(
            "t.settlement_id = s.p_settlement_id::bigint AND t.structure_number = "
            "s.p_structure_number AND t.deleted_at IS NULL AND t.source_id IS DISTINCT FROM "
            "s.source_id",
            "'structure number ' || quote_literal(s.p_structure_number) || ' is already used in "
            "settlement ' || s.p_settlement_id || ' by structure ' || t.id",
            "FROM structures t",
        )

    def report(self, report: Report) -> None:
        """Fill the report's counts, errors and warnings from the stage."""
        counts = self.conn.execute(
            text(
                f"SELECT count(*) AS features, count(*) FILTER (WHERE reason IS NOT NULL) AS bad "
                f"FROM {STAGE}"
            )
        ).one()
        report.features = int(counts.features)
        report.rejected = int(counts.bad)
        several = len(report.layers) > 1
        for kind, column in (("errors", "reason"), ("warnings", "warning")):
            rows = self.conn.execute(
                text(
                    f"SELECT idx, source_id, {column} AS reason, layer FROM {STAGE} "
                    f"WHERE {column} IS NOT NULL ORDER BY seq LIMIT {MAX_LISTED}"
                )
            ).all()
            listed: list[Any] = getattr(report, kind)
            for row in rows:
                entry = {"index": row.idx, "source_id": row.source_id, "reason": row.reason}
                if several:
                    entry["layer"] = row.layer
                listed.append(entry)

    def value_counts(self) -> dict[str, dict[str, int]]:
        """Features per target value of each enum field and settlement (dry runs)."""
        out: dict[str, dict[str, int]] = {}
        for prop in self.properties:
            if prop.enum is None and prop.name != "settlement_id":
                continue
            rows = self.conn.execute(
                text(
                    f"SELECT coalesce({_column(prop)}, '(none)') AS value, count(*) AS n "
                    f"FROM {STAGE} WHERE reason IS NULL GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 100"
                )
            ).all()
            out[prop.name] = {str(row.value): int(row.n) for row in rows}
        return out

    def merge(self, report: Report, import_id: int) -> None:
        """Insert the new features and update the changed ones; count each."""
        collection = self.collection
        table = collection.table.name
        props = self.properties
        targets = [p.name for p in props]
        values = [_cast(p) for p in props]
        if collection.geometry_types:
            targets.append("geom")
            values.append("ST_Multi(s.geom)" if collection.multi else "s.geom")
        if self.parent is not None:
            targets.append(self.parent.field)
            values.append("s.parent_id")
        old = ", ".join(f"t.{name}" if name != "geom" else "ST_AsEWKB(t.geom)" for name in targets)
        new = ", ".join(
            value if name != "geom" else f"ST_AsEWKB({value})"
            for name, value in zip(targets, values, strict=True)
        )
        self.conn.execute(
            text(
                f"""
                UPDATE {STAGE} s SET target_id = t.id,
                    action = CASE WHEN ({old}) IS NOT DISTINCT FROM ({new})
                             THEN 'unchanged' ELSE 'update' END
                FROM {table} t
                WHERE s.reason IS NULL AND t.source_id = s.source_id AND t.deleted_at IS NULL
                """
            )
        )
        # the stamp trigger's work done here, so its WHEN clause skips it (migration 0020)
        actor = self.conn.execute(text("SELECT makazi_actor()")).scalar()
        inserted = insert_audited(
            self.conn,
            table,
            f"""
            INSERT INTO {table} ({", ".join(targets)}, source_id, import_id,
                                 created_by, updated_by)
            SELECT {", ".join(values)}, s.source_id, :import_id, :actor, :actor
            FROM {STAGE} s WHERE s.reason IS NULL AND s.target_id IS NULL ORDER BY s.seq
            """,
            {"import_id": import_id, "actor": actor},
        )
        assignments = ", ".join(f"{n} = {v}" for n, v in zip(targets, values, strict=True))
        updated = self.conn.execute(
            text(
                f"""
                UPDATE {table} t SET {assignments}, import_id = :import_id
                FROM {STAGE} s WHERE s.action = 'update' AND t.id = s.target_id
                """
            ),
            {"import_id": import_id},
        ).rowcount
        unchanged = self.conn.execute(
            text(f"SELECT count(*) FROM {STAGE} WHERE action = 'unchanged'")
        ).scalar()
        report.imported = int(inserted)
        report.updated = int(updated)
        report.unchanged = int(unchanged or 0)
