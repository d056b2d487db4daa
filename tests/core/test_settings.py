"""Settings come from MAKAZI_* variables with documented defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from geo.core import settings as settings_module
from geo.core.db import libpq_conninfo, normalise_url
from geo.core.settings import Settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MAKAZI_DATABASE_URL", "MAKAZI_DATA_DIR", "MAKAZI_MAX_UPLOAD_MB"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.database_url == ""
    assert settings.data_dir == Path(__file__).resolve().parents[2] / "data"  # the checkout's
    assert settings.public_read is True
    assert settings.max_upload_mb == 50 and settings.max_upload_bytes == 50 * 1024 * 1024
    assert settings.max_trace_points == 1_000_000
    assert settings.items_default_limit == 100 and settings.items_max_limit == 10_000


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAKAZI_PUBLIC_READ", "false")
    monkeypatch.setenv("MAKAZI_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("MAKAZI_DATABASE_REPLICA_URLS", '["postgresql://r1/db"]')
    monkeypatch.setenv("MAKAZI_LOG_LEVEL", "DEBUG")
    settings = Settings()
    assert settings.public_read is False
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.database_replica_urls == ["postgresql://r1/db"]
    assert settings.log_level == "debug"


def test_bad_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAKAZI_MAX_UPLOAD_MB", "0")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.setenv("MAKAZI_MAX_UPLOAD_MB", "5")
    monkeypatch.setenv("MAKAZI_LOG_LEVEL", "chatty")
    with pytest.raises(ValidationError):
        Settings()


def test_urls_use_psycopg3() -> None:
    assert normalise_url("postgres://u:p@h:5/db") == "postgresql+psycopg://u:p@h:5/db"
    assert normalise_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg://u@h/db"


def test_libpq_multi_host_urls_are_accepted() -> None:
    # as `pg_autoctl show uri` and Patroni print them
    url = "postgres://u:p@a:5433,b:5434/db?target_session_attrs=read-write&sslmode=prefer"
    assert libpq_conninfo(normalise_url(url)) == (
        "user=u password=p dbname=db host=a,b port=5433,5434 "
        "sslmode=prefer target_session_attrs=read-write"
    )


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for name in Settings.model_fields:
        variable = f"MAKAZI_{name.upper()}"
        # one README row may name a pair: `MAKAZI_ANALYSIS_MIN_CELL_M` / `MAX_CELL_M`
        paired = f"/ `{variable.removeprefix('MAKAZI_ANALYSIS_')}`"
        assert f"`{variable}`" in readme or paired in readme, variable


def test_data_dir_does_not_follow_the_current_folder(tmp_path: Path) -> None:
    """A command run from another folder finds the checkout's database, not a new one there."""
    elsewhere = tmp_path / "somewhere-else"
    elsewhere.mkdir()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MAKAZI_")}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "db", "status"],
        cwd=elsewhere,
        env={**environment, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    status = json.loads(result.stdout)
    checkout_data = Path(__file__).resolve().parents[2] / "data"
    assert status["data_dir"] == str(checkout_data / "pg")
    assert not (elsewhere / "data").exists()


def test_installed_package_uses_the_users_data_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", "/srv/home/amina/.data")
    fake = Path("/srv/venv/lib/python3.11/site-packages/geo/core/settings.py")
    monkeypatch.setattr(settings_module, "__file__", str(fake))
    assert settings_module.default_data_dir() == Path("/srv/home/amina/.data/makazi")
