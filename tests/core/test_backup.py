"""``makazi db dump`` / ``makazi db restore``: a round trip gives back every table as it was."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from geo.core.auth import create_token
from geo.core.cluster import EmbeddedCluster
from geo.core.db import migrate
from geo.demo.generator import generate
from geo.demo.loader import load
from tests.support.cli import makazi


@pytest.fixture(scope="module")
def backed_up(cluster: EmbeddedCluster) -> Iterator[tuple[str, Engine]]:
    """A database with demo data (history, households, traces with their GPX) and a token."""
    url = cluster.create_database("makazi_backup", drop=True)
    migrate(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        load(conn, generate(300, seed=5))
        create_token(conn, name="keeper", role="admin")
    yield url, engine
    engine.dispose()
    cluster.drop_database("makazi_backup")


def snapshot(engine: Engine) -> dict[str, str]:
    """A digest of every row of every table Makazi owns."""
    with engine.connect() as conn:
        tables = conn.execute(
            text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename <> 'spatial_ref_sys' ORDER BY 1"
            )
        ).scalars()
        return {
            table: conn.execute(
                text(
                    f"SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' "
                    f"ORDER BY t::text)), '') FROM {table} t"
                )
            ).scalar_one()
            for table in list(tables)
        }


def test_dump_and_restore_give_back_every_table(
    backed_up: tuple[str, Engine], tmp_path: Path
) -> None:
    url, engine = backed_up
    before = snapshot(engine)
    assert int(before["structures"].split(":")[0]) == 300
    assert (
        int(before["trace_files"].split(":")[0]) > 0
        and int(before["feature_history"].split(":")[0]) > 0
    )
    out = tmp_path / "makazi.dump"
    dumped = makazi("db", "dump", "-o", str(out), MAKAZI_DATABASE_URL=url)
    assert dumped.returncode == 0, dumped.stderr
    assert out.read_bytes()[:5] == b"PGDMP"  # pg_dump's custom format
    assert not (tmp_path / "makazi.dump.partial").exists()
    # life goes on: rows deleted, changed and added after the backup
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM households WHERE id % 3 = 0"))
        conn.execute(text("UPDATE structures SET storeys = storeys + 1 WHERE id < 40"))
        conn.execute(text("UPDATE api_tokens SET revoked_at = now()"))
    assert snapshot(engine) != before
    restored = makazi("db", "restore", str(out), MAKAZI_DATABASE_URL=url)
    assert restored.returncode == 0, restored.stderr
    assert snapshot(engine) == before


def test_a_broken_dump_is_one_line_and_changes_nothing(
    backed_up: tuple[str, Engine], tmp_path: Path
) -> None:
    url, engine = backed_up
    before = snapshot(engine)
    junk = tmp_path / "junk.dump"
    junk.write_bytes(b"PGDMP" + b"\x00" * 100)
    result = makazi("db", "restore", str(junk), MAKAZI_DATABASE_URL=url)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("makazi: pg_restore failed"), result.stderr
    assert snapshot(engine) == before
    missing = makazi("db", "restore", str(tmp_path / "nope.dump"), MAKAZI_DATABASE_URL=url)
    assert missing.returncode == 1 and "no dump file" in missing.stderr
    no_output = makazi("db", "dump", MAKAZI_DATABASE_URL=url)
    assert no_output.returncode == 1 and "-o FILE" in no_output.stderr
