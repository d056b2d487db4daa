"""What the import tests share: generated layers, posting a file, counting rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import geopandas as gpd
from fastapi.testclient import TestClient
from shapely.geometry import box
from sqlalchemy import Connection, text

__all__ = [
    "count_rows",
    "footprints",
    "make_settlement",
    "post_import",
]

KIBERA = (36.78, -1.315)


def footprints(n: int, *, x0: float = KIBERA[0], y0: float = KIBERA[1]) -> gpd.GeoDataFrame:
    """``n`` square structure footprints in a row with numbers, uses and storeys."""
    uses = ["residential", "Business", "mixed", "school"]
    geoms = [box(x0 + i * 0.0001, y0, x0 + i * 0.0001 + 0.00005, y0 + 0.00005) for i in range(n)]
    return gpd.GeoDataFrame(
        {
            "fid_src": [f"S{i}" for i in range(n)],
            "Structure_Number": [f"KB-{i:04d}" for i in range(n)],
            "use": [uses[i % len(uses)] for i in range(n)],
            "storeys": [1 + i % 3 for i in range(n)],
            "wall": ["mabati"] * n,
        },
        geometry=geoms,
        crs="EPSG:4326",
    )


def make_settlement(connection: Connection, name: str = "Kibera import test") -> int:
    """A settlement around :data:`KIBERA`; its id."""
    outline = box(KIBERA[0] - 0.01, KIBERA[1] - 0.01, KIBERA[0] + 0.02, KIBERA[1] + 0.01)
    return int(
        connection.execute(
            text(
                "INSERT INTO settlements (name, geom) "
                "VALUES (:n, ST_Multi(ST_GeomFromText(:g, 4326))) RETURNING id"
            ),
            {"n": name, "g": outline.wkt},
        ).scalar_one()
    )


def post_import(
    client: TestClient,
    path: Path,
    headers: dict[str, str],
    *,
    filename: str | None = None,
    mapping: dict[str, Any] | None = None,
    **fields: Any,
) -> Any:
    """POST ``path`` to /imports with ``fields`` as form fields."""
    data = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}
    if mapping is not None:
        data["mapping"] = json.dumps(mapping)
    with path.open("rb") as handle:
        return client.post(
            "/imports",
            files={"file": (filename or path.name, handle, "application/octet-stream")},
            data=data,
            headers=headers,
        )


def count_rows(connection: Connection, table: str, where: str = "TRUE") -> int:
    """Live rows of ``table`` matching ``where``."""
    return int(
        connection.execute(
            text(f"SELECT count(*) FROM {table} WHERE deleted_at IS NULL AND {where}")
        ).scalar_one()
    )
