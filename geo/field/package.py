"""A settlement's offline package: its boundary, structures and facilities as one JSON.

The field app downloads it once per settlement and keeps it in IndexedDB, so the
phone can draw, tap and edit the settlement's features with no network.  PostgreSQL
writes every Feature as text (:func:`geo.layers.items.feature_sql`, the same
properties and versions as ``/collections/{c}/items``); Python only joins them.
Built packages are kept in a small in-process cache keyed by a cheap *stamp* of
the settlement (each layer's row count, sum of versions and latest change: every
edit bumps a version; its structures' households too, whose number each structure
carries), so the size shown before a download and the download itself cost one build.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from geo.core.crs import CRS84
from geo.core.errors import NotFound
from geo.layers.items import feature_sql
from geo.layers.registry import FACILITIES, SETTLEMENTS, STRUCTURES, Collection

__all__ = ["Package", "PackageCache", "build_package", "package_stamp", "settlement_head"]

FORMAT = "makazi-field-package/1"


@dataclass(frozen=True)
class Package:
    """A built package: its bytes, strong ETag and counts."""

    settlement_id: int
    name: str
    body: bytes
    etag: str
    structures: int
    facilities: int
    bbox: tuple[float, float, float, float]


def package_stamp(conn: Connection, settlement_id: int) -> str | None:
    """What changes whenever the package would (None when the settlement is absent)."""
    row = conn.execute(
        text(
            """
            SELECT s.version, s.deleted_at IS NOT NULL,
                   (SELECT count(*) || '/' || coalesce(sum(version), 0) || '/'
                           || coalesce(max(updated_at)::text, '')
                      FROM structures WHERE settlement_id = s.id),
                   (SELECT count(*) || '/' || coalesce(sum(version), 0) || '/'
                           || coalesce(max(updated_at)::text, '')
                      FROM facilities WHERE settlement_id = s.id),
                   -- a structure's ``households`` count changes with its households only
                   (SELECT count(*) || '/' || coalesce(sum(h.version), 0) || '/'
                           || coalesce(max(h.updated_at)::text, '')
                      FROM households h JOIN structures st ON st.id = h.structure_id
                     WHERE st.settlement_id = s.id)
            FROM settlements s WHERE s.id = :id
            """
        ),
        {"id": settlement_id},
    ).first()
    if row is None or row[1]:
        return None
    return f"{row[0]}:{row[2]}:{row[3]}:{row[4]}"


def _features(conn: Connection, collection: Collection, where: str, sid: int) -> tuple[str, int]:
    # every identifier comes from the registry and ``where`` from this module, never a request
    feature = feature_sql(collection, CRS84)
    query = (
        f"SELECT coalesce(string_agg({feature}, ',' ORDER BY t.id), ''), count(*) "  # noqa: S608
        f"FROM {collection.table.name} t WHERE {where} AND t.deleted_at IS NULL"
    )
    row = conn.execute(text(query), {"id": sid}).one()
    return str(row[0]), int(row[1])


def settlement_head(
    conn: Connection, settlement_id: int
) -> tuple[str, tuple[float, float, float, float]]:
    """A live settlement's name and bounding box (west, south, east, north).

    Raises
    ------
    NotFound
        When the settlement does not exist (or was deleted).
    """
    row = conn.execute(
        text(
            "SELECT name, ST_XMin(geom), ST_YMin(geom), ST_XMax(geom), ST_YMax(geom) "
            "FROM settlements WHERE id = :id AND deleted_at IS NULL"
        ),
        {"id": settlement_id},
    ).first()
    if row is None:
        raise NotFound(f"settlement {settlement_id} does not exist")
    return str(row[0]), (float(row[1]), float(row[2]), float(row[3]), float(row[4]))


def build_package(conn: Connection, settlement_id: int) -> Package:
    """The package of one settlement.

    Raises
    ------
    NotFound
        When the settlement does not exist (or was deleted).
    """
    name, bbox = settlement_head(conn, settlement_id)
    boundary, _ = _features(conn, SETTLEMENTS, "t.id = :id", settlement_id)
    structures, n_structures = _features(conn, STRUCTURES, "t.settlement_id = :id", settlement_id)
    facilities, n_facilities = _features(conn, FACILITIES, "t.settlement_id = :id", settlement_id)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "settlement": {"id": settlement_id, "name": name, "bbox": bbox},
    }
    prefix = json.dumps(meta, separators=(",", ":"))[:-1]
    body = (
        f'{prefix},"boundary":{boundary or "null"},'
        f'"structures":{{"type":"FeatureCollection","features":[{structures}]}},'
        f'"facilities":{{"type":"FeatureCollection","features":[{facilities}]}}}}'
    ).encode()
    digest = hashlib.sha256(body).hexdigest()[:32]
    return Package(
        settlement_id=settlement_id,
        name=name,
        body=body,
        etag=f'"{digest}"',
        structures=n_structures,
        facilities=n_facilities,
        bbox=bbox,
    )


class PackageCache:
    """The last few built packages, each valid while its settlement's stamp holds."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._items: OrderedDict[int, tuple[str, Package]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, conn: Connection, settlement_id: int) -> Package:
        """The current package of ``settlement_id`` (built when its stamp changed)."""
        stamp = package_stamp(conn, settlement_id)
        if stamp is None:
            raise NotFound(f"settlement {settlement_id} does not exist")
        with self._lock:
            held = self._items.get(settlement_id)
            if held is not None and held[0] == stamp:
                self._items.move_to_end(settlement_id)
                return held[1]
        package = build_package(conn, settlement_id)
        with self._lock:
            self._items[settlement_id] = (stamp, package)
            self._items.move_to_end(settlement_id)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return package
