"""Small generated GeoJSON for tests that upload features."""

from __future__ import annotations

import json

__all__ = ["squares"]


def squares(
    count: int,
    *,
    prefix: str,
    west: float,
    south: float,
    step: float,
    size: float,
    notes: str | None = None,
) -> bytes:
    """A FeatureCollection of ``count`` square structures in a row going east.

    Each is ``size`` degrees wide, ``step`` degrees from the last, numbered
    ``<prefix>-00000`` on; ``notes`` adds that text as every feature's ``notes``.
    """
    features = []
    for i in range(count):
        x = west + i * step
        properties: dict[str, object] = {
            "structure_number": f"{prefix}-{i:05d}",
            "use": "residential",
        }
        if notes is not None:
            properties["notes"] = notes
        ring = [[x, south], [x + size, south], [x + size, south + size], [x, south]]
        features.append(
            {
                "type": "Feature",
                "properties": properties,
                "geometry": {"type": "Polygon", "coordinates": [ring]},
            }
        )
    return json.dumps({"type": "FeatureCollection", "features": features}).encode()
