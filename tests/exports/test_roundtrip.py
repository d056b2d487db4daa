"""Export -> import in every format: the same features, field for field, in a fresh database.

Each layer is exported by the running server (settlements and facilities whole,
structures of the settlement holding the awkward row: NULLs, unicode, HTML-ish
text) and imported with the import pipeline into another database that holds
only the same settlements (same ids, so ``settlement_id`` means the same).  Every
feature must come back: its exported ``id`` as the source id, every writable
property equal, its geometry within a tenth of a millimetre.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import shapely
from sqlalchemy import Connection, Engine, create_engine, text

from geo.core.cluster import EmbeddedCluster
from geo.core.db import act_as, migrate
from geo.core.settings import Settings
from geo.imports.pipeline import ImportOptions, limits_from, run_import
from geo.layers.registry import COLLECTIONS, Collection
from tests.exports.conftest import AWKWARD_NOTE, AWKWARD_NUMBER, ExportServer, download

FORMATS = ["geojson", "csv", "kml", "fgb", "gpkg", "shp"]
LAYERS = ["settlements", "structures", "facilities"]
TOLERANCE = 1e-9  # degrees
TARGET = "makazi_roundtrip"


def writable(collection: Collection) -> list[str]:
    """The properties an import writes (read-only bookkeeping is the database's own)."""
    return [p.name for p in collection.properties if p.writable]


def rows(conn: Connection, collection: Collection, where: str) -> dict[str, dict[str, Any]]:
    """Live rows by key (``id`` as text in the source, ``source_id`` in the target)."""
    key = "id::text" if where.startswith("source") else "source_id"
    where = where.removeprefix("source")
    found = conn.execute(
        text(
            f"SELECT {key} AS key, {', '.join(writable(collection))}, ST_AsBinary(geom) AS wkb "
            f"FROM {collection.table.name} WHERE deleted_at IS NULL {where}"
        )
    ).mappings()
    return {str(r["key"]): {**r, "geometry": shapely.from_wkb(bytes(r["wkb"]))} for r in found}


@pytest.fixture(scope="module")
def target(cluster: EmbeddedCluster, export_database: tuple[str, str, str]) -> Iterator[Engine]:
    """A fresh database holding the export database's settlements, ids and all."""
    url = cluster.create_database(TARGET, drop=True)
    migrate(url)
    source = create_engine(export_database[0])
    with source.connect() as conn:
        settlements = conn.execute(
            text("SELECT id, name, ST_AsEWKB(geom) AS geom FROM settlements")
        ).all()
    source.dispose()
    engine = create_engine(url)
    with engine.begin() as conn:
        for row in settlements:
            conn.execute(
                text("INSERT INTO settlements (id, name, geom) VALUES (:id, :name, :geom)"),
                {"id": row.id, "name": row.name, "geom": bytes(row.geom)},
            )
    yield engine
    engine.dispose()
    cluster.drop_database(TARGET)


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_then_import_is_lossless(
    export_server: ExportServer,
    target: Engine,
    settings: Settings,
    tmp_path: Path,
    fmt: str,
    layer: str,
) -> None:
    collection = COLLECTIONS[layer]
    source = create_engine(export_server.database_url)
    with source.connect() as conn:
        settlement = conn.execute(
            text("SELECT settlement_id FROM structures WHERE structure_number = :n"),
            {"n": AWKWARD_NUMBER},
        ).scalar_one()
        where = f"source AND settlement_id = {settlement}" if layer == "structures" else "source"
        expected = rows(conn, collection, where)
    source.dispose()
    params = {"settlement_id": settlement} if layer == "structures" else {}
    suffix = {"shp": "zip"}.get(fmt, fmt)
    path = download(export_server, layer, fmt, tmp_path / f"{layer}.{suffix}", **params)

    with target.connect() as conn, conn.begin() as transaction:
        act_as(conn, "round-trip")
        if layer == "settlements":
            conn.execute(text("DELETE FROM settlements"))  # rolled back below
        with path.open("rb") as handle:
            report = run_import(
                conn,
                handle,
                filename=path.name,
                options=ImportOptions(collection=layer),
                limits=limits_from(settings),
            )
        got = rows(conn, collection, "")
        transaction.rollback()

    assert (report.imported, report.rejected, report.errors) == (len(expected), 0, [])
    assert sorted(got) == sorted(expected)
    names = writable(collection)
    for key, row in expected.items():
        back = got[key]
        wrong = {n: (row[n], back[n]) for n in names if row[n] != back[n]}
        assert not wrong, f"{fmt} {layer} id {key}: {wrong}"
        assert shapely.hausdorff_distance(back["geometry"], row["geometry"]) < TOLERANCE
    if layer == "structures":
        awkward = next(r for r in got.values() if r["structure_number"] == AWKWARD_NUMBER)
        assert (awkward["review_note"], awkward["storeys"]) == (AWKWARD_NOTE, None)
