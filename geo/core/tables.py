"""SQLAlchemy Core description of the tables that the migrations create.

The migrations in ``migrations/versions`` are the source of truth for DDL
(constraints, partial indexes, triggers); these ``Table`` objects give queries
typed column handles.  ``tests/test_migrations.py`` checks the two agree.
"""

from __future__ import annotations

from typing import Any

from geoalchemy2 import Geometry
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

__all__ = [
    "SRID",
    "api_tokens",
    "facilities",
    "feature_history",
    "households",
    "idempotency_keys",
    "import_files",
    "imports",
    "metadata",
    "settlement_profiles",
    "settlements",
    "settlements_export",
    "structures",
    "trace_files",
    "trace_points",
    "trace_segments",
    "traces",
]

SRID = 4326
metadata = MetaData()


def _bookkeeping() -> list[Column[Any]]:
    return [
        Column("version", Integer, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("created_by", Text),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        Column("updated_by", Text),
        Column("deleted_at", DateTime(timezone=True)),
        Column("deleted_by", Text),
    ]


def _imported() -> list[Column[Any]]:
    """Where an imported row came from (migration 0013)."""
    return [Column("source_id", Text), Column("import_id", BigInteger)]


def _geom(kind: str, nullable: bool = False) -> Column[Any]:
    return Column("geom", Geometry(kind, srid=SRID, spatial_index=False), nullable=nullable)


api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("name", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("token_hash", Text, nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("expires_at", DateTime(timezone=True)),
)

settlements = Table(
    "settlements",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("name", Text, nullable=False),
    Column("alt_names", ARRAY(Text), nullable=False),
    Column("county", Text),
    Column("ward", Text),
    Column("status", Text, nullable=False),
    Column("source", Text),
    Column("notes", Text),
    _geom("MULTIPOLYGON"),
    *_imported(),
    *_bookkeeping(),
)

structures = Table(
    "structures",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("settlement_id", BigInteger),
    Column("structure_number", Text),
    Column("use", Text),
    Column("wall_material", Text),
    Column("roof_material", Text),
    Column("storeys", Integer),
    Column("households", Integer, nullable=False),
    Column("review_state", Text, nullable=False),
    Column("review_note", Text),
    Column("position_accuracy_m", Float),
    _geom("GEOMETRY"),
    *_imported(),
    *_bookkeeping(),
)

households = Table(
    "households",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("structure_id", BigInteger, nullable=False),
    Column("head_name", Text),
    Column("phone", Text),
    Column("members", Integer),
    Column("tenure", Text),
    Column("rent_kes", Integer),
    Column("years_in_settlement", Integer),
    *_imported(),
    Column("review_state", Text, nullable=False),
    Column("review_note", Text),
    *_bookkeeping(),
)

settlement_profiles = Table(
    "settlement_profiles",
    metadata,
    Column("settlement_id", BigInteger, primary_key=True),
    Column("fields", JSONB, nullable=False),
    *_bookkeeping(),
)


def _view_column(column: Column[Any]) -> Column[Any]:
    """A view's copy of ``column`` (a view's columns are all nullable)."""
    kind = column.type
    if isinstance(kind, Geometry):
        kind = Geometry(kind.geometry_type, srid=kind.srid, spatial_index=False, nullable=True)
    return Column(column.name, kind, nullable=True)


settlements_export = Table(
    "settlements_export",
    metadata,
    *(_view_column(column) for column in settlements.columns),
    Column("profile", Text),
    comment="a view (migration 0016): settlements with their reported profile, for exports",
)

facilities = Table(
    "facilities",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("type", Text, nullable=False),
    Column("condition", Text),
    Column("name", Text),
    Column("settlement_id", BigInteger),
    _geom("GEOMETRY"),
    *_imported(),
    *_bookkeeping(),
)

traces = Table(
    "traces",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("name", Text, nullable=False),
    Column("owner", Text, nullable=False),
    Column("visibility", Text, nullable=False),
    Column("settlement_id", BigInteger),
    Column("content_sha256", Text, nullable=False),
    Column("points", Integer, nullable=False),
    Column("tracks", Integer, nullable=False),
    Column("segments", Integer, nullable=False),
    Column("routes", Integer, nullable=False),
    Column("waypoints", Integer, nullable=False),
    Column("length_m", Float, nullable=False),
    Column("duration_s", Float),
    Column("started_at", DateTime(timezone=True)),
    Column("ended_at", DateTime(timezone=True)),
    Column("stats", JSONB, nullable=False),
    Column("dropped", JSONB, nullable=False),
    Column("warnings", JSONB, nullable=False),
    _geom("MULTILINESTRING", nullable=True),
    *_bookkeeping(),
)

trace_files = Table(
    "trace_files",
    metadata,
    Column("trace_id", BigInteger, primary_key=True),
    Column("content_type", Text, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("content", LargeBinary, nullable=False),
)

trace_segments = Table(
    "trace_segments",
    metadata,
    Column("trace_id", BigInteger, primary_key=True),
    Column("kind", Text, primary_key=True),
    Column("track", Integer, primary_key=True),
    Column("segment", Integer, primary_key=True),
    Column("points", Integer, nullable=False),
    _geom("LINESTRING", nullable=True),
)

trace_points = Table(
    "trace_points",
    metadata,
    Column("trace_id", BigInteger, primary_key=True),
    Column("kind", Text, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("track", Integer),
    Column("segment", Integer),
    _geom("POINT"),
    Column("ele", Float),
    Column("time", DateTime(timezone=True)),
    Column("name", Text),
    Column("extensions", JSONB),
)

feature_history = Table(
    "feature_history",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("collection", Text, nullable=False),
    Column("feature_id", BigInteger, nullable=False),
    Column("version", Integer, nullable=False),
    Column("action", Text, nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    Column("changed_by", Text),
    Column("changes", JSONB),  # NULL on create rows: makazi_history_changes() (0024)
    Column("snapshot", JSONB),
)

edit_conflicts = Table(
    "edit_conflicts",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("collection", Text, nullable=False),
    Column("feature_id", BigInteger, nullable=False),
    Column("base_version", Integer, nullable=False),
    Column("theirs_version", Integer, nullable=False),
    Column("base", JSONB, nullable=False),
    Column("theirs", JSONB, nullable=False),
    Column("mine", JSONB, nullable=False),
    Column("fields", JSONB, nullable=False),
    Column("created_by", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("resolution", Text),
    Column("resolved_by", Text),
    Column("resolved_at", DateTime(timezone=True)),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("principal", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("scope", Text, nullable=False),
    Column("request_sha256", Text, nullable=False),
    Column("status", Integer),
    Column("headers", JSONB),
    Column("body", LargeBinary),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("completed_at", DateTime(timezone=True)),
)

imports = Table(
    "imports",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("collection", Text, nullable=False),
    Column("filename", Text),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("options", JSONB, nullable=False),
    Column("status", Text, nullable=False),
    Column("progress", Float, nullable=False),
    Column("report", JSONB),
    Column("attempts", Integer, nullable=False),
    Column("worker", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("heartbeat_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
)

import_files = Table(
    "import_files",
    metadata,
    Column("import_id", BigInteger, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("chunk", LargeBinary, nullable=False),
)
