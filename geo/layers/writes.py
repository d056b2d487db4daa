"""Writing features (OGC API - Features Part 4): create, replace, merge-patch, delete.

Every write is checked before it reaches the table: properties against the
registry (type, enum, length; unknown names refused, read-only ones ignored),
geometry against the collection's types, the vertex limit and PostGIS's
validity (``ST_IsValidReason``; ``repair=True`` runs ``ST_MakeValid``).
Versions and history are kept by the database triggers; an update names the
version it read and loses to any write that came in between (412).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import psycopg.errors
from sqlalchemy import Connection, bindparam, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from geo.core.crs import Crs
from geo.core.errors import (
    BadRequest,
    Conflict,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    TooLarge,
)
from geo.core.geojson import GEOJSON_TO_POSTGIS
from geo.layers.placement import check_placement
from geo.layers.registry import Collection, Property

__all__ = [
    "FeatureInput",
    "GeometryRules",
    "parse_feature_body",
    "check_properties",
    "check_values",
    "parse_json",
    "create_features",
    "update_feature",
    "delete_feature",
    "feature_history",
    "current_version",
]

_GEOMETRY_TYPES = GEOJSON_TO_POSTGIS
_DUPLICATE_KEY = re.compile(r"\(settlement_id, structure_number\)=\((\d+), (.*)\)")


@dataclass(frozen=True)
class GeometryRules:
    """How a write's geometry is read and checked.

    Attributes
    ----------
    crs
        The CRS the coordinates are in (``Content-Crs``).
    repair
        Run ``ST_MakeValid`` on invalid geometry instead of refusing it.
    max_vertices
        The most positions one geometry may have.
    max_km_from_settlements
        Refuse geometry farther than this from every settlement (0: no check;
        ``force=true`` sets it to 0).
    """

    crs: Crs
    repair: bool = False
    max_vertices: int = 100_000
    max_km_from_settlements: float = 0.0


@dataclass
class FeatureInput:
    """One feature of a write request, checked for shape (not yet for validity)."""

    properties: dict[str, Any]
    geometry: dict[str, Any] | None
    has_geometry: bool
    index: int = 0


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(body: bytes) -> Any:
    """Parse a JSON body, naming line and column on error and refusing NaN/Infinity."""
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            slug="invalid-json",
        ) from exc
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", slug="invalid-json") from exc


def _feature(obj: Any, index: int, *, where: str) -> FeatureInput:
    if not isinstance(obj, dict):
        raise InvalidInput(f"{where} must be a GeoJSON Feature object", index=index)
    if obj.get("type") not in (None, "Feature"):
        raise InvalidInput(f"{where}: type must be 'Feature', got {obj.get('type')!r}")
    properties = obj.get("properties") or {}
    if not isinstance(properties, dict):
        raise InvalidInput(f"{where}: properties must be an object")
    geometry = obj.get("geometry")
    if geometry is not None and not isinstance(geometry, dict):
        raise InvalidInput(f"{where}: geometry must be a GeoJSON geometry object or null")
    return FeatureInput(properties, geometry, "geometry" in obj, index)


def parse_feature_body(body: bytes, *, allow_collection: bool) -> list[FeatureInput]:
    """The features of a request body: a Feature, or a FeatureCollection when allowed."""
    document = parse_json(body)
    if isinstance(document, dict) and document.get("type") == "FeatureCollection":
        if not allow_collection:
            raise InvalidInput("send one Feature here, not a FeatureCollection")
        features = document.get("features")
        if not isinstance(features, list) or not features:
            raise InvalidInput("FeatureCollection.features must be a non-empty list")
        return [_feature(f, i, where=f"features[{i}]") for i, f in enumerate(features)]
    return [_feature(document, 0, where="body")]


def _check_value(prop: Property, value: Any, prefix: str = "properties.") -> Any:
    name = prefix + prop.name
    if value is None:
        if prop.required:
            raise InvalidInput(f"{name} is required and cannot be null", field=prop.name)
        return None
    if prop.kind == "integer":
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (isinstance(value, float) and not value.is_integer())
        ):
            raise InvalidInput(f"{name} must be a whole number", field=prop.name)
        value = int(value)
    elif prop.kind == "number":
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise InvalidInput(f"{name} must be a number", field=prop.name)
    elif prop.kind == "string-array":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidInput(f"{name} must be a list of strings", field=prop.name)
        if any(len(v) > prop.max_length for v in value):
            raise InvalidInput(f"{name} has an entry over {prop.max_length} chars", field=prop.name)
        return value
    else:
        if not isinstance(value, str):
            raise InvalidInput(f"{name} must be a string", field=prop.name)
        if len(value) > prop.max_length:
            raise InvalidInput(
                f"{name} is longer than {prop.max_length} characters", field=prop.name
            )
        if (wrong := prop.choice_error(value, label=name)) is not None:
            raise InvalidInput(wrong, field=prop.name)
        if prop.required and not value.strip():
            raise InvalidInput(f"{name} must not be empty", field=prop.name)
    if prop.minimum is not None and value < prop.minimum:
        raise InvalidInput(f"{name} must be at least {prop.minimum:g}", field=prop.name)
    if prop.maximum is not None and value > prop.maximum:
        raise InvalidInput(f"{name} must be at most {prop.maximum:g}", field=prop.name)
    return value


def check_values(
    properties: tuple[Property, ...],
    given: dict[str, Any],
    *,
    partial: bool,
    owner: str,
    prefix: str = "properties.",
) -> dict[str, Any]:
    """Validated column values for ``given`` against a property list.

    Read-only properties (``version``, ``households``…) are ignored, so a client
    may send back what it read; unknown ones are refused by name.
    """
    by_name = {p.name: p for p in properties}
    writable = [p for p in properties if p.writable]
    values: dict[str, Any] = {}
    for name, value in given.items():
        prop = by_name.get(name)
        if prop is None:
            if name == "id":
                continue
            names = ", ".join(p.name for p in writable)
            raise InvalidInput(
                f"{prefix}{name} is not a property of {owner}; writable: {names}", field=name
            )
        if not prop.writable:
            continue
        checked = _check_value(prop, value, prefix)
        values[name] = prop.default if checked is None else checked
    if not partial:
        for prop in writable:
            if prop.name not in values:
                if prop.required:
                    raise InvalidInput(f"{prefix}{prop.name} is required", field=prop.name)
                values[prop.name] = prop.default
    return values


def check_properties(
    collection: Collection, properties: dict[str, Any], *, partial: bool
) -> dict[str, Any]:
    """Validated column values from a feature's GeoJSON properties."""
    return check_values(collection.properties, properties, partial=partial, owner=collection.name)


def _count_positions(coords: Any, depth: int = 0) -> int:
    if depth > 6:
        raise InvalidInput("geometry coordinates are nested too deeply")
    if isinstance(coords, list) and coords and isinstance(coords[0], int | float):
        return 1
    if isinstance(coords, list):
        return sum(_count_positions(c, depth + 1) for c in coords)
    raise InvalidInput("geometry coordinates must be arrays of numbers")


def _prepare_geometry(
    conn: Connection,
    collection: Collection,
    geometry: dict[str, Any] | None,
    rules: GeometryRules,
) -> bytes:
    """Checked, repaired-if-asked geometry as EWKB in EPSG:4326."""
    crs, repair, max_vertices = rules.crs, rules.repair, rules.max_vertices
    if geometry is None:
        raise InvalidInput("geometry is required", field="geometry")
    kind = geometry.get("type")
    if kind not in _GEOMETRY_TYPES:
        raise InvalidInput(
            f"geometry.type {kind!r} is not a GeoJSON geometry type", field="geometry"
        )
    if kind == "GeometryCollection" or "coordinates" not in geometry:
        raise InvalidInput(
            f"geometry must be one of {', '.join(collection.geometry_types)} with coordinates",
            field="geometry",
        )
    vertices = _count_positions(geometry["coordinates"])
    if vertices > max_vertices:
        raise TooLarge(
            f"geometry has {vertices} vertices; the limit is {max_vertices} "
            "(MAKAZI_MAX_FEATURE_VERTICES)",
            field="geometry",
        )
    base_type = _GEOMETRY_TYPES[kind]
    if base_type not in collection.geometry_types:
        raise InvalidInput(
            f"{collection.name} take {', '.join(collection.geometry_types)} geometries, "
            f"not {base_type}",
            field="geometry",
        )
    statement = text(
        """
        WITH parsed AS (
            SELECT ST_Force2D(ST_GeomFromGeoJSON(:g)) AS geom
        ), given AS (
            SELECT ST_Transform(ST_SetSRID(
                       CASE WHEN :flip THEN ST_FlipCoordinates(geom) ELSE geom END, :srid),
                   4326) AS geom
            FROM parsed
        ), checked AS (
            SELECT geom, ST_IsValid(geom) AS valid, ST_IsValidReason(geom) AS reason
            FROM given
        ), fixed AS (
            SELECT valid, reason,
                   CASE WHEN valid OR NOT :repair THEN geom
                        WHEN :polygonal THEN ST_CollectionExtract(
                            ST_MakeValid(geom, 'method=structure'), 3)
                        ELSE ST_MakeValid(geom) END AS geom
            FROM checked
        )
        SELECT valid, reason, ST_IsEmpty(geom) AS empty, ST_IsValid(geom) AS ok_now,
               GeometryType(geom) AS kind,
               coalesce(ST_XMin(geom) >= -180 AND ST_XMax(geom) <= 180
                        AND ST_YMin(geom) >= -90 AND ST_YMax(geom) <= 90, true) AS on_earth,
               ST_AsEWKB(CASE WHEN :multi THEN ST_Multi(geom) ELSE geom END) AS wkb
        FROM fixed
        """
    ).bindparams(
        bindparam("g"),
        bindparam("srid"),
        bindparam("repair"),
        bindparam("polygonal"),
        bindparam("multi"),
    )
    polygonal = all("POLYGON" in t for t in collection.geometry_types)
    try:
        with conn.begin_nested():
            row = conn.execute(
                statement,
                {
                    "g": json.dumps(geometry),
                    "srid": crs.srid,
                    "flip": crs.swap_axes,
                    "repair": repair,
                    "polygonal": polygonal,
                    "multi": collection.multi,
                },
            ).one()
    except DBAPIError as exc:
        if isinstance(exc, OperationalError) or exc.connection_invalidated:
            raise  # the database went away or timed out: a 503, not the client's geometry
        message = str(exc.orig).splitlines()[0] if exc.orig else "unreadable geometry"
        raise InvalidInput(f"geometry cannot be read: {message}", field="geometry") from exc
    if not row.valid and not repair:
        raise InvalidInput(
            f"geometry is not valid: {row.reason} (send ?repair=true to have it repaired)",
            field="geometry",
            reason=row.reason,
        )
    if row.empty or not row.ok_now:
        raise InvalidInput("geometry is empty or could not be repaired", field="geometry")
    if not row.on_earth:
        raise InvalidInput(
            f"geometry has coordinates outside longitude [-180, 180] / latitude [-90, 90] once in "
            f"EPSG:4326 (is the axis order or Content-Crs right? it was read as {crs.label})",
            field="geometry",
        )
    if row.kind not in collection.geometry_types:
        raise InvalidInput(
            f"geometry became {row.kind} after repair, which {collection.name} do not take",
            field="geometry",
        )
    wkb = bytes(row.wkb)
    check_placement(conn, wkb, max_km=rules.max_km_from_settlements, field="geometry")
    return wkb


def _structure_conflict(conn: Connection, exc: IntegrityError) -> Conflict | None:
    orig = exc.orig
    if not isinstance(orig, psycopg.errors.UniqueViolation):
        return None
    detail = orig.diag.message_detail or ""
    match = _DUPLICATE_KEY.search(detail)
    if match is None:
        return None
    settlement_id, number = int(match.group(1)), match.group(2)
    existing = conn.execute(
        text(
            "SELECT id FROM structures WHERE settlement_id = :s AND structure_number = :n "
            "AND deleted_at IS NULL"
        ),
        {"s": settlement_id, "n": number},
    ).scalar()
    return Conflict(
        f"structure number {number!r} is already used in settlement {settlement_id} "
        f"by structure {existing}",
        conflicting_id=existing,
        field="structure_number",
    )


def _integrity(conn: Connection, exc: IntegrityError) -> Exception:
    conflict = _structure_conflict(conn, exc)
    if conflict is not None:
        return conflict
    orig = exc.orig
    if isinstance(orig, psycopg.errors.ForeignKeyViolation):
        return InvalidInput("settlement_id names no existing settlement", field="settlement_id")
    message = str(orig).splitlines()[0] if orig else "constraint violated"
    return InvalidInput(f"the feature breaks a rule of the table: {message}")


def _row_values(values: dict[str, Any]) -> dict[str, Any]:
    """Column values for Core statements, with the EWKB geometry parsed by PostGIS."""
    out = dict(values)
    if "geom" in out:
        out["geom"] = func.ST_GeomFromEWKB(bindparam("wkb", out["geom"]))
    return out


def create_features(
    conn: Connection,
    collection: Collection,
    features: list[FeatureInput],
    rules: GeometryRules,
) -> list[tuple[int, int]]:
    """Insert features; all or nothing.

    Returns
    -------
    list of (id, version)

    Raises
    ------
    InvalidInput
        Listing every failing feature by index when any fails (nothing written).
    Conflict
        For a single feature whose structure number is taken.
    """
    created: list[tuple[int, int]] = []
    errors: list[dict[str, Any]] = []
    for feature in features:
        try:
            with conn.begin_nested():
                values = check_properties(collection, feature.properties, partial=False)
                values["geom"] = _prepare_geometry(conn, collection, feature.geometry, rules)
                table = collection.table
                try:
                    with conn.begin_nested():
                        row = conn.execute(
                            insert(table)
                            .values(_row_values(values))
                            .returning(table.c.id, table.c.version)
                        ).one()
                except IntegrityError as exc:
                    raise _integrity(conn, exc) from exc
                created.append((int(row.id), int(row.version)))
        except (InvalidInput, Conflict) as exc:
            if len(features) == 1:
                raise
            errors.append({"index": feature.index, "reason": exc.detail})
    if errors:
        raise InvalidInput(
            f"{len(errors)} of {len(features)} features were refused; nothing was written",
            errors=errors,
        )
    return created


def _missing_or_stale(conn: Connection, collection: Collection, fid: int) -> Exception:
    table = collection.table
    row = conn.execute(select(table.c.version, table.c.deleted_at).where(table.c.id == fid)).first()
    if row is None or row.deleted_at is not None:
        return NotFound(f"{collection.name} {fid} does not exist")
    return PreconditionFailed(
        f"{collection.name} {fid} is at version {row.version}; your If-Match is stale. "
        "Read it again, reapply your change, and send the new version.",
        current_version=int(row.version),
    )


def _update(
    conn: Connection,
    collection: Collection,
    fid: int,
    values: dict[str, Any],
    expected_version: int | None,
) -> int:
    table = collection.table
    assignments = _row_values(values) or {"version": table.c.version}  # no-op still versions
    statement = update(table).where(table.c.id == fid, table.c.deleted_at.is_(None))
    if expected_version is not None:
        statement = statement.where(table.c.version == expected_version)
    try:
        with conn.begin_nested():
            row = conn.execute(statement.values(assignments).returning(table.c.version)).first()
    except IntegrityError as exc:
        raise _integrity(conn, exc) from exc
    if row is None:
        raise _missing_or_stale(conn, collection, fid)
    return int(row.version)


def update_feature(
    conn: Connection,
    collection: Collection,
    fid: int,
    feature: FeatureInput,
    *,
    merge: bool,
    expected_version: int | None,
    rules: GeometryRules,
) -> int:
    """Replace a feature (PUT) or merge-patch it (PATCH, RFC 7396); returns the new version.

    A replacement needs the geometry and resets properties it leaves out; a merge
    patch changes only what it names (``null`` clears) and the geometry if given.
    """
    values = check_properties(collection, feature.properties, partial=merge)
    if feature.has_geometry or not merge:
        values["geom"] = _prepare_geometry(conn, collection, feature.geometry, rules)
    return _update(conn, collection, fid, values, expected_version)


def delete_feature(
    conn: Connection, collection: Collection, fid: int, *, expected_version: int | None
) -> int:
    """Soft-delete a feature (the row stays, with ``deleted_at``); returns its last version."""
    return _update(conn, collection, fid, {"deleted_at": func.now()}, expected_version)


def current_version(conn: Connection, collection: Collection, fid: int) -> int | None:
    """The live feature's version, or None."""
    table = collection.table
    value = conn.execute(
        select(table.c.version).where(table.c.id == fid, table.c.deleted_at.is_(None))
    ).scalar()
    return int(value) if value is not None else None


def feature_history(conn: Connection, collection: Collection, fid: int) -> list[dict[str, Any]]:
    """Every recorded version of a feature, oldest first.

    Raises
    ------
    NotFound
        When the feature never existed.
    """
    table = collection.table
    exists = conn.execute(select(table.c.id).where(table.c.id == fid)).first()
    if exists is None:
        raise NotFound(f"{collection.name} {fid} does not exist")
    rows = conn.execute(
        text(
            "SELECT version, changed_at, changed_by, action, "
            "makazi_history_changes(changes, snapshot) AS changes FROM feature_history "
            "WHERE collection = :c AND feature_id = :id ORDER BY version, id"
        ),
        {"c": collection.name, "id": fid},
    ).all()
    hidden = set(collection.private_fields)
    return [
        {
            "version": row.version,
            "changed_at": row.changed_at.isoformat(),
            "changed_by": row.changed_by,
            "action": row.action,
            "changes": {k: v for k, v in row.changes.items() if k not in hidden},
        }
        for row in rows
    ]
