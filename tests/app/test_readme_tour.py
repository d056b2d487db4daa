"""README.md's tour runs as written: every block marked ``<!-- tour -->``, top to bottom.

The blocks are joined into one bash script and run in a fresh folder against
a live server with demo data, the way a newcomer pastes them after
``make serve``: ``source .venv/bin/activate``, ``makazi``, ``curl`` and ``jq``.
Only the address changes (the server listens on a free port). ``curl`` fails on
any HTTP error here, so a block that answers 4xx stops the script and fails the
test with that block's output.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from geo.core.cluster import EmbeddedCluster
from tests.support.live import LiveServer, live_server_running

README = Path(__file__).resolve().parents[2] / "README.md"
TOUR_BLOCK = re.compile(r"<!-- tour -->\s*```sh\n(.*?)```", re.S)
README_BASE = "http://127.0.0.1:8000"


def tour_blocks() -> list[str]:
    """The README's tour blocks, in order."""
    return TOUR_BLOCK.findall(README.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tour_server(cluster: EmbeddedCluster) -> Iterator[LiveServer]:
    """A server of its own: the tour writes (tokens, a structure, a trace, a settlement)."""
    with live_server_running(cluster, structures=600, database="makazi_tour") as server:
        yield server


def test_the_tour_blocks_cover_the_api_tour() -> None:
    script = "\n".join(tour_blocks())
    for needle in (
        "makazi token create",
        "POST $BASE/collections/structures/items",
        "-X PATCH",
        "-X DELETE",
        "/traces",
        "/boundary",
        "/analysis/impact",
        "makazi trace upload",
        "makazi analyse",
    ):
        assert needle in script, needle


@pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("jq") is None,
    reason="curl and jq (Debian packages; scripts/system-deps.sh base installs them)",
)
def test_readme_tour_runs_as_written(tour_server: LiveServer, tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent
    assert (bindir / "makazi").exists(), "the package is not installed in this interpreter"
    activate = tmp_path / ".venv" / "bin" / "activate"
    activate.parent.mkdir(parents=True)
    activate.write_text(f'export PATH="{bindir}:$PATH"\n')
    script = "\n".join(tour_blocks()).replace(README_BASE, tour_server.base_url)
    preamble = 'set -euo pipefail\ncurl() { command curl --fail-with-body --show-error "$@"; }\n'
    env = {
        **os.environ,
        "MAKAZI_DATABASE_URL": tour_server.database_url,
        "MAKAZI_DATA_DIR": str(tmp_path / "data"),
        "MAKAZI_LOG_LEVEL": "info",
    }
    result = subprocess.run(
        ["bash", "-c", preamble + script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "identical" in result.stdout  # the GPX came back byte for byte
    assert "2 already there" in output  # the re-run of trace upload stored nothing new

    engine = create_engine(tour_server.database_url)
    try:
        with engine.connect() as conn:
            structure = conn.execute(
                text(
                    "SELECT s.storeys, s.deleted_at IS NOT NULL AS deleted, t.name AS settlement "
                    "FROM structures s JOIN settlements t ON t.id = s.settlement_id "
                    "WHERE s.structure_number = 'KB-04-0117A'"
                )
            ).one()
            block = conn.execute(
                text("SELECT version FROM settlements WHERE name = 'Laini Saba block 4'")
            ).one()
            trace = conn.execute(
                text("SELECT visibility FROM traces WHERE name = 'Kibera lanes'")
            ).one()
            revoked = conn.execute(
                text("SELECT revoked_at IS NOT NULL FROM api_tokens WHERE name = 'lost-phone'")
            ).scalar_one()
    finally:
        engine.dispose()
    assert structure.settlement.startswith("Kibera")  # placed inside Kibera, as the text says
    assert structure.storeys == 2 and structure.deleted
    assert block.version == 2  # the walked boundary is the block's second version
    assert trace.visibility == "public"
    assert revoked
