"""Runtime settings, read from ``MAKAZI_*`` environment variables.

Every limit the service enforces lives here, with a default that suits a
community server on a small machine.  README.md lists them all.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings", "default_data_dir", "get_settings"]


def _split_list(value: object) -> object:
    """Accept ``a,b,c`` as well as a JSON list for list settings."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def default_data_dir() -> Path:
    """Where the embedded cluster lives unless ``MAKAZI_DATA_DIR`` says otherwise.

    Run from a checkout, ``<checkout>/data``; installed as a package, the user's
    data folder (``$XDG_DATA_HOME/makazi``, by default ``~/.local/share/makazi``).
    Never the current folder: a command run from elsewhere must find the same
    database the server uses, not make a new one there.
    """
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "migrations").is_dir():
        return checkout / "data"
    user_data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(user_data) / "makazi"


class Settings(BaseSettings):
    """All configuration of one Makazi process.

    Attributes
    ----------
    database_url
        SQLAlchemy URL of an existing PostGIS database.  Empty means: run the
        embedded cluster in ``data_dir/pg``.
    database_replica_urls
        Read-only replicas; read queries are routed there when set (see
        :mod:`geo.core.replicas` for the rule).
    database_listen_url
        Where the change feed ``LISTEN``s (the primary itself, not a pooler in
        transaction mode); empty means ``database_url``.
    database_prepared_statements
        Let psycopg prepare statements it runs often; switch off behind a pooler in
        transaction mode that cannot keep them (pgbouncer before 1.21).
    replica_max_lag_s
        A replica further behind the primary than this is skipped until it catches up.
    replica_check_s
        How often each process checks its replicas' health and lag.
    read_after_write_s
        For this long after a client's write, that client's reads go to the primary.
    data_dir
        Folder for the embedded cluster and other runtime state
        (:func:`default_data_dir` unless set).
    public_read
        Whether anonymous clients may read public layers.
    public_verified_only
        Whether anonymous summaries, profiles and analyses count only rows whose
        ``review_state`` is ``verified`` (as ``?verified=true`` does).
    """

    model_config = SettingsConfigDict(env_prefix="MAKAZI_", extra="ignore")

    database_url: str = ""
    database_replica_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    database_listen_url: str = ""
    database_prepared_statements: bool = True
    replica_max_lag_s: float = Field(default=10.0, ge=0)
    replica_check_s: float = Field(default=2.0, gt=0)
    read_after_write_s: float = Field(default=5.0, ge=0)
    data_dir: Path = Field(default_factory=default_data_dir)
    public_read: bool = True
    public_verified_only: bool = False
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: str = "info"
    shutdown_timeout_s: int = Field(default=10, ge=1)
    # ``makazi serve`` worker processes; 0: one per CPU core this process may use, at most 4
    workers: int = Field(default=0, ge=0, le=64)

    pool_size: int = Field(default=10, ge=1, le=200)
    statement_timeout_ms: int = Field(default=30_000, ge=100)
    idle_in_transaction_timeout_ms: int = Field(default=300_000, ge=0)
    analysis_timeout_ms: int = Field(default=20_000, ge=100)
    # summaries and access analyses kept per process until their data changes (0: none)
    answer_cache_entries: int = Field(default=1_000, ge=0)
    analysis_max_buffer_m: float = Field(default=5_000.0, gt=0)
    analysis_max_distance_m: float = Field(default=5_000.0, gt=0)
    analysis_max_area_km2: float = Field(default=100.0, gt=0)
    analysis_max_vertices: int = Field(default=10_000, ge=4)
    analysis_min_cell_m: float = Field(default=10.0, gt=0)
    analysis_max_cell_m: float = Field(default=10_000.0, gt=0)
    analysis_max_cells: int = Field(default=10_000, ge=1)

    max_upload_mb: int = Field(default=50, ge=1)
    spool_dir: Path | None = None
    max_trace_points: int = Field(default=1_000_000, ge=1)
    max_feature_vertices: int = Field(default=100_000, ge=4)
    max_json_body_mb: int = Field(default=20, ge=1)
    max_km_from_settlements: float = Field(default=50.0, ge=0)
    token_failures_per_minute: int = Field(default=20, ge=0)
    # GPS traces (geo/traces.py, geo/gpx.py, geo/uploads.py)
    max_decompressed_mb: int = Field(default=250, ge=1)
    max_archive_members: int = Field(default=100, ge=1)
    trace_max_xml_depth: int = Field(default=64, ge=8, le=256)
    trace_max_speed_mps: float = Field(default=60.0, gt=0)
    trace_max_hdop: float = Field(default=20.0, gt=0)
    trace_boundary_simplify_m: float = Field(default=1.0, ge=0)
    trace_ingest_timeout_ms: int = Field(default=600_000, ge=1_000)
    trace_columnar_read: bool = True  # plain track files read in columns (geo/traces/columns.py)

    # Bulk imports (geo/imports/)
    import_async_mb: int = Field(default=5, ge=0)
    import_max_line_kb: int = Field(default=1024, ge=1)
    import_batch_size: int = Field(default=5_000, ge=1)
    import_workers: int = Field(default=1, ge=0, le=16)
    import_poll_s: float = Field(default=2.0, gt=0)
    import_stale_s: float = Field(default=60.0, gt=0)
    import_max_attempts: int = Field(default=3, ge=1)
    import_timeout_ms: int = Field(default=3_600_000, ge=1_000)

    items_default_limit: int = Field(default=100, ge=1)
    items_max_limit: int = Field(default=10_000, ge=1)

    tile_cache_mb: int = Field(default=64, ge=0)
    tiles_max_zoom: int = Field(default=20, ge=0, le=24)
    tile_max_age_s: int = Field(default=30, ge=0)
    tile_change_feed: bool = True

    # exports (geo/exports): GDAL worker processes per server process; statement time
    export_workers: int = Field(default=2, ge=1, le=32)
    export_timeout_ms: int = Field(default=600_000, ge=1_000)
    # rows read from the server-side cursor per chunk of a streamed export
    export_batch_rows: int = Field(default=5_000, ge=1)
    # a GET answer is held whole (so a lost replica can be retried) up to this size; a larger
    # one is sent on as it is produced
    held_answer_max_mb: float = Field(default=16.0, gt=0)
    atlas_timeout_s: float = Field(default=120.0, gt=0)
    atlas_max_structures: int = Field(default=10_000, ge=1)

    # the field app (/field): a phone fix worse than this (metres) is flagged before saving
    field_max_accuracy_m: float = Field(default=20.0, gt=0)
    # its offline map: the settlement's tiles from zoom 14 to this one, at most this many
    field_tiles_max_zoom: int = Field(default=18, ge=14, le=22)
    field_tiles_max: int = Field(default=20_000, ge=1)

    demo_structures: int = Field(default=20_000, ge=0)
    demo_seed: int = 7

    @field_validator("database_replica_urls", "cors_origins", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.lower()
        if level not in {"critical", "error", "warning", "info", "debug"}:
            raise ValueError("log_level must be one of critical, error, warning, info, debug")
        return level

    @property
    def max_decompressed_bytes(self) -> int:
        """Limit on the decompressed content of a gzip/bzip2/zip upload, in bytes."""
        return self.max_decompressed_mb * 1024 * 1024

    @property
    def max_upload_bytes(self) -> int:
        """Upload size limit in bytes."""
        return self.max_upload_mb * 1024 * 1024


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()
