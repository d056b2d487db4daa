"""Reading a layer in one pass (GDAL's Arrow stream) gives what reading it by offset gave."""

from __future__ import annotations

from pathlib import Path

import pytest

from geo.imports.sources import Limits, Source, _transformer, open_source
from tests.support.samples import SAMPLES

LIMITS = Limits(max_decompressed_bytes=1 << 28, max_archive_members=100, max_line_bytes=1 << 20)
#: A GeoPackage (fids as ids), 3D KML and GeoJSON (Z dropped), a projected zipped
#: Shapefile (reprojected), FlatGeobuf, a curve (read by offset: the stream has none).
FILES = (
    "formats/pdok__test_geometry_valid.gpkg",
    "formats/gdal__samples.kml",
    "kenya/lcspatial__Kibera_Settlement_Boundary.geojson",
    "formats/geopandas__nybb_16a.zip",
    "formats/fgb__countries.fgb",
    "formats/pyogrio__curvepolygon.gpkg",
)


def _by_offset(source: Source, batch_size: int) -> list[tuple[object, ...]]:
    return [
        (b.layer, b.indexes, b.source_ids, b.wkb, b.problems, b.rows)
        for layer in source.layers
        for b in source._batches_by_offset(layer, _transformer(layer.crs), batch_size)
    ]


@pytest.mark.parametrize("name", FILES)
def test_stream_reads_what_offsets_read(name: str) -> None:
    path = Path(SAMPLES) / "geo" / name
    if not path.exists():
        pytest.skip("../shared/samples is not beside the checkout")
    with path.open("rb") as handle:
        source = open_source(
            handle, filename=path.name, limits=LIMITS, layer=None, source_crs=None, geometry=None
        )
    try:
        streamed = [
            (b.layer, b.indexes, b.source_ids, b.wkb, b.problems, b.rows) for b in source.batches(3)
        ]
        assert streamed == _by_offset(source, 3)
        assert sum(len(batch[1]) for batch in streamed) == source.total > 0
    finally:
        source.close()
