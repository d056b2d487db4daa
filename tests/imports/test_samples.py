"""Every file in ../shared/samples/geo per its MANIFEST.tsv: formats import, hostile are refused.

``formats/`` files go into facilities (which take points, lines and polygons)
with ``partial=true``: every feature the manifest counts is accounted for as
imported or rejected, and exactly the imported ones are written.  ``hostile/``
files are imported all-or-nothing: the broken ones get a clear 4xx problem and
write nothing; the few that are only odd (a ``!`` in the name, a non-conformant
``.shx``) import with the manifest's count.  Loose Shapefiles are zipped with
their sidecars first, as a user would send them.
"""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection

from tests.imports.helpers import count_rows, post_import
from tests.support.samples import SAMPLES

Headers = Callable[..., dict[str, str]]
GEO = SAMPLES / "geo"
MANIFEST = GEO / "MANIFEST.tsv"
ANY_TYPE = {"defaults": {"type": "other"}}

#: hostile files that must be refused (4xx); the others are odd but readable.
REFUSED = {
    "hostile/ets__empty.gpkg",
    "hostile/ets__gdal_sample.gpkg",
    "hostile/ets__v12_bad_attributes.gpkg",  # two layers, one of them has no geometry
    "hostile/fgb__clusterfuzz-testcase-minimized-fgb_fuzzer-4642513358553088.fgb",
    "hostile/gdal__buggymultipoly.shp",
    "hostile/gdal__csv_with_utf8_bom.csv",  # its WKT column holds no geometry
    "hostile/gdal__junk_content_after_valid_doc.kml",
    "hostile/gdal__pointnan.shp",
    "hostile/gdal__truncated.kml",
    "hostile/pdok__test_broken_geopackage.gpkg",
    "hostile/pyshp__corrupt_too_long.shp",  # the same feature repeated
    "hostile/pyshp__empty_zipfile.zip",
    "hostile/pyshp__latin1.shp",  # no .shx
    "hostile/shpjs__badzip.zip",
    "hostile/shpjs__htmlprj.shp",
    "hostile/shpjs__noshp.zip",
    "hostile/togeojson__bad.kml",
}


def _manifest(folder: str) -> list[dict[str, str]]:
    if not MANIFEST.exists():
        return []
    with MANIFEST.open(encoding="utf-8") as handle:
        return [
            row for row in csv.DictReader(handle, delimiter="\t") if row["file"].startswith(folder)
        ]


def _layers(folder: str) -> list[tuple[str, str | None, int | None]]:
    """(file, layer to name or None, features) per manifest row."""
    rows = _manifest(folder)
    per_file: dict[str, int] = {}
    for row in rows:
        per_file[row["file"]] = per_file.get(row["file"], 0) + 1
    out = []
    for row in rows:
        several = per_file[row["file"]] > 1 and not row["file"].endswith((".kml", ".kmz"))
        count = int(row["features"]) if row["features"].isdigit() else None
        out.append((row["file"], row["layers"] if several else None, count))
    return out


def _upload(relative: str, tmp_path: Path) -> Path:
    """The file as a user sends it (a loose Shapefile zipped with its sidecars)."""
    path = GEO / relative
    if path.suffix.lower() != ".shp":
        return path
    target = tmp_path / f"{path.stem}.zip"
    with zipfile.ZipFile(target, "w") as archive:
        for side in path.parent.glob(f"{path.stem}.*"):
            archive.write(side, side.name)
    return target


def _kml_total(relative: str) -> int:
    return sum(int(r["features"]) for r in _manifest(relative) if r["features"].isdigit())


@pytest.mark.skipif(not MANIFEST.exists(), reason="../shared/samples is not beside the checkout")
@pytest.mark.parametrize(("relative", "layer", "features"), _layers("formats/"))
def test_format_sample_accounts_for_every_feature(
    client: TestClient,
    token_for: Headers,
    connection: Connection,
    tmp_path: Path,
    relative: str,
    layer: str | None,
    features: int | None,
) -> None:
    if relative.endswith((".kml", ".kmz")):
        features = _kml_total(relative)  # every folder is read
    before = count_rows(connection, "facilities")
    fields: dict[str, Any] = {"collection": "facilities", "partial": True}
    if layer is not None:
        fields["layer"] = layer
    response = post_import(
        client, _upload(relative, tmp_path), token_for("mapper"), mapping=ANY_TYPE, **fields
    )
    assert response.status_code == 201, response.text
    report = response.json()
    assert report["features"] == features
    assert report["imported"] + report["rejected"] == features
    assert len(report["errors"]) == report["rejected"]
    assert all(e["reason"] and isinstance(e["index"], int) for e in report["errors"])
    assert count_rows(connection, "facilities") - before == report["imported"]


@pytest.mark.skipif(not MANIFEST.exists(), reason="../shared/samples is not beside the checkout")
@pytest.mark.parametrize("relative", sorted({row["file"] for row in _manifest("hostile/")}))
def test_hostile_sample_is_refused_or_accounted_for(
    client: TestClient, token_for: Headers, connection: Connection, tmp_path: Path, relative: str
) -> None:
    before = count_rows(connection, "facilities")
    response = post_import(
        client,
        _upload(relative, tmp_path),
        token_for("mapper"),
        mapping=ANY_TYPE,
        collection="facilities",
    )
    if relative in REFUSED:
        assert 400 <= response.status_code < 500, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["detail"]
        assert "makazi-import-" not in response.json()["detail"]  # no server paths
        assert count_rows(connection, "facilities") == before
    else:
        assert response.status_code == 201, response.text
        expected = sum(int(r["features"]) for r in _manifest(relative))
        assert response.json()["imported"] == expected
        assert count_rows(connection, "facilities") - before == expected


def test_samples_are_listed() -> None:
    if not MANIFEST.exists():
        pytest.skip("../shared/samples is not beside the checkout")
    assert len(_layers("formats/")) > 50
    assert {row["file"] for row in _manifest("hostile/")} >= REFUSED
