"""Real clients against a live server: GDAL/OGR, OWSLib, QGIS and the ogctests suite."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.support.live import LiveServer

pytestmark = pytest.mark.clients
LAYERS = ("settlements", "structures", "facilities", "traces")


def sql_count(server: LiveServer, sql: str) -> int:
    engine = create_engine(server.database_url)
    with engine.connect() as conn:
        value = int(conn.execute(text(sql)).scalar_one())
    engine.dispose()
    return value


def sql_ids(server: LiveServer, table: str) -> list[int]:
    engine = create_engine(server.database_url)
    with engine.connect() as conn:
        ids = conn.execute(
            text(f"SELECT id FROM {table} WHERE deleted_at IS NULL ORDER BY id")
        ).scalars()
        found = [int(i) for i in ids]
    engine.dispose()
    return found


def live_counts(server: LiveServer) -> dict[str, int]:
    return {
        "settlements": sql_count(
            server, "SELECT count(*) FROM settlements WHERE deleted_at IS NULL"
        ),
        "structures": sql_count(server, "SELECT count(*) FROM structures WHERE deleted_at IS NULL"),
        "facilities": sql_count(server, "SELECT count(*) FROM facilities WHERE deleted_at IS NULL"),
        "traces": sql_count(
            server, "SELECT count(*) FROM traces WHERE deleted_at IS NULL AND visibility = 'public'"
        ),
    }


needs_gdal = pytest.mark.skipif(
    shutil.which("ogr2ogr") is None,
    reason="GDAL command-line tools (Debian gdal-bin) not installed",
)


@needs_gdal
def test_gdal_lists_layers(live_server: LiveServer) -> None:
    result = subprocess.run(
        ["ogrinfo", "-ro", "-q", f"OAPIF:{live_server.base_url}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for layer in LAYERS:
        assert re.search(rf"\d+: {layer}\b", result.stdout), result.stdout


@needs_gdal
@pytest.mark.parametrize("layer", ["settlements", "structures", "facilities"])
def test_gdal_reads_every_feature(live_server: LiveServer, layer: str, tmp_path: Path) -> None:
    out = tmp_path / f"{layer}.geojson"
    # a small page size makes GDAL follow many next links
    result = subprocess.run(
        [
            "ogr2ogr",
            "-f",
            "GeoJSON",
            str(out),
            f"OAPIF:{live_server.base_url}",
            layer,
            "-oo",
            "PAGE_SIZE=37",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    features = json.loads(out.read_text())["features"]
    assert len(features) == live_counts(live_server)[layer]
    # GDAL renumbers features 1..N; Makazi's id survives as a property
    assert sorted(f["properties"]["id"] for f in features) == sql_ids(live_server, layer)
    distinct = {json.dumps([f["properties"], f["geometry"]], sort_keys=True) for f in features}
    assert len(distinct) == len(features)  # nothing read twice


@needs_gdal
def test_gdal_attribute_filter_matches_sql(live_server: LiveServer) -> None:
    result = subprocess.run(
        [
            "ogrinfo",
            "-ro",
            "-so",
            f"OAPIF:{live_server.base_url}",
            "structures",
            "-where",
            "use = 'business' AND storeys >= 2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    count = int(re.search(r"Feature Count: (\d+)", result.stdout).group(1))  # type: ignore[union-attr]
    assert count == sql_count(
        live_server,
        "SELECT count(*) FROM structures WHERE use = 'business' AND storeys >= 2 "
        "AND deleted_at IS NULL",
    )


def test_owslib_features(live_server: LiveServer) -> None:
    from owslib.ogcapi.features import Features

    api = Features(live_server.base_url)
    ids = [c["id"] for c in api.collections()["collections"]]
    assert ids == list(LAYERS)
    assert (
        "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core"
        in api.conformance()["conformsTo"]
    )
    page = api.collection_items("structures", limit=25)
    assert page["numberReturned"] == 25
    assert page["features"][0]["properties"]["structure_number"]
    queryables = api.collection_queryables("structures")
    assert "use" in queryables["properties"]
    one = api.collection_item("settlements", page["features"][0]["properties"]["settlement_id"])
    assert one["type"] == "Feature"


QGIS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from qgis.core import Qgis, QgsApplication, QgsVectorDataProvider, QgsVectorLayer
    app = QgsApplication([], False)
    app.initQgis()
    base, layers = sys.argv[1], sys.argv[2:]
    result = {}
    for name in layers:
        layer = QgsVectorLayer(f"url='{base}' typename='{name}'", name, "OAPIF")
        result[name] = {"valid": layer.isValid(),
                        "count": sum(1 for _ in layer.getFeatures())}
    layer = QgsVectorLayer(f"url='{base}' typename='structures'", "s", "OAPIF")
    caps = layer.dataProvider().capabilities()
    result["version"] = Qgis.QGIS_VERSION_INT
    result["fields"] = [f.name() for f in layer.fields()]
    result["can"] = [name for name in ("AddFeatures", "ChangeAttributeValues", "DeleteFeatures")
                     if caps & getattr(QgsVectorDataProvider, name)]
    layer.setSubsetString("use = 'school'")
    result["schools"] = sum(1 for _ in layer.getFeatures())
    app.exitQgis()
    print("RESULT " + json.dumps(result))
    """
)


def _qgis_python() -> str | None:
    for candidate in ("/usr/bin/python3", shutil.which("python3")):
        if (
            candidate
            and subprocess.run(
                [candidate, "-c", "import qgis.core"],
                capture_output=True,
                timeout=60,
                env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
            ).returncode
            == 0
        ):
            return candidate
    return None


def test_qgis_loads_every_collection(live_server: LiveServer) -> None:
    python = _qgis_python()
    if python is None:
        pytest.skip("QGIS Python bindings (Debian python3-qgis) not installed")
    result = subprocess.run(
        [python, "-c", QGIS_SCRIPT, live_server.base_url, *LAYERS],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": "/tmp"},
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, result.stderr[-3000:]
    report = json.loads(line.removeprefix("RESULT "))
    expected = live_counts(live_server)
    for name in LAYERS:
        assert report[name]["valid"], name
        assert report[name]["count"] == expected[name], name
    assert report["schools"] == sql_count(
        live_server, "SELECT count(*) FROM structures WHERE use = 'school' AND deleted_at IS NULL"
    )
    assert "id" in report["fields"]  # Makazi's id, not only QGIS's own feature ids
    # QGIS reads a layer's Part 4 methods from OPTIONS (Allow) since 3.32; older ones are read-only
    if report["version"] >= 33200:
        assert report["can"] == ["AddFeatures", "ChangeAttributeValues", "DeleteFeatures"]
    else:
        assert report["can"] == []


def test_ogctests_core_suite(live_server: LiveServer, tmp_path: Path) -> None:
    """Run the ogctests OGC API - Features core suite and require every test to pass."""
    import ogctests

    suite = Path(ogctests.__file__).parent / "features" / "core"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            str(suite),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "INSTANCE_URL": live_server.base_url},
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    print(f"ogctests features/core: {summary}")
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 25, result.stdout[-3000:]
    assert "failed" not in summary and "error" not in summary, result.stdout[-5000:]
