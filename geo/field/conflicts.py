"""Edit conflicts the field app reports: an offline edit refused with 412, kept field by field.

When a phone's edit of a feature is refused because someone changed the
feature meanwhile (``If-Match`` stale), the app posts what it knew (``base``:
the properties at the version it edited, ``mine``: the properties it wanted;
a move adds ``geometry`` to both) and the server adds ``theirs`` (the properties
now, and the geometry for a move) itself, so the record shows
the three side by side for each field the phone changed.  Nothing is merged
here: the person on the phone chooses *Keep mine* (a new edit on top of theirs)
or *Keep theirs*, and the choice is written back as ``resolution`` for a
reviewer (planner+) reading ``GET /conflicts``.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from geo.core.auth import Principal
from geo.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from geo.core.tables import edit_conflicts
from geo.layers.items import fetch_feature
from geo.layers.registry import Collection, get_collection

__all__ = ["RESOLUTIONS", "list_conflicts", "parse_report", "record_conflict", "resolve_conflict"]

RESOLUTIONS = ("mine", "theirs")
MAX_LISTED = 1000


def _properties(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{name} must be an object of properties", field=name)
    return value


def parse_report(body: Any) -> tuple[Collection, int, int, dict[str, Any], dict[str, Any]]:
    """``{collection, feature_id, base_version, base, mine}`` checked; 422 naming the field."""
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    name = body.get("collection")
    collection = get_collection(name) if isinstance(name, str) else None
    if collection is None or not collection.writable:
        raise InvalidInput("collection must name a writable collection", field="collection")
    numbers = []
    for key in ("feature_id", "base_version"):
        value = body.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**62:
            raise InvalidInput(f"{key} must be a positive integer", field=key)
        numbers.append(value)
    base = _properties(body.get("base"), "base")
    mine = _properties(body.get("mine"), "mine")
    return collection, numbers[0], numbers[1], base, mine


def record_conflict(
    conn: Connection,
    *,
    collection: Collection,
    feature_id: int,
    base_version: int,
    base: dict[str, Any],
    mine: dict[str, Any],
    user: Principal,
) -> dict[str, Any]:
    """Store the conflict with the feature's current properties as ``theirs``; the record.

    Raises
    ------
    NotFound
        When the feature does not exist (any more).
    Conflict
        409 when the feature is still at ``base_version`` (there is nothing to resolve).
    """
    found = fetch_feature(conn, collection, feature_id, user=user)
    if found is None:
        raise NotFound(f"{collection.name} {feature_id} does not exist")
    current, version = found
    if version == base_version:
        raise Conflict(f"{collection.name} {feature_id} is still at version {base_version}")
    now = json.loads(current)
    theirs = {k: v for k, v in now["properties"].items() if k in _names(collection)}
    if "geometry" in mine:  # a move: the position is one more field, side by side
        theirs["geometry"] = now.get("geometry")
    fields = {
        name: {"base": base.get(name), "theirs": theirs.get(name), "mine": value}
        for name, value in mine.items()
        if value != base.get(name)
    }
    row = conn.execute(
        insert(edit_conflicts)
        .values(
            collection=collection.name,
            feature_id=feature_id,
            base_version=base_version,
            theirs_version=version,
            base=base,
            theirs=theirs,
            mine=mine,
            fields=fields,
            created_by=user.name,
            created_at=func.now(),
        )
        .returning(*edit_conflicts.c)
    ).one()
    return _record(row._asdict())


def _names(collection: Collection) -> set[str]:
    return {p.name for p in collection.properties}


def _record(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("created_at", "resolved_at"):
        if row[key] is not None:
            row[key] = row[key].isoformat()
    return row


def list_conflicts(
    conn: Connection, *, collection: str | None = None, feature_id: int | None = None
) -> list[dict[str, Any]]:
    """Reported conflicts, newest first (at most :data:`MAX_LISTED`)."""
    statement = select(edit_conflicts).order_by(edit_conflicts.c.id.desc()).limit(MAX_LISTED)
    if collection is not None:
        statement = statement.where(edit_conflicts.c.collection == collection)
    if feature_id is not None:
        statement = statement.where(edit_conflicts.c.feature_id == feature_id)
    return [_record(row._asdict()) for row in conn.execute(statement)]


def resolve_conflict(
    conn: Connection, conflict_id: int, resolution: Any, user: Principal
) -> dict[str, Any]:
    """Record which side the person kept (the reporter, or a planner+).

    Raises
    ------
    InvalidInput, NotFound, Forbidden
        A resolution other than ``mine``/``theirs``; no such conflict; someone else's.
    """
    if resolution not in RESOLUTIONS:
        raise InvalidInput("resolution must be mine or theirs", field="resolution")
    row = conn.execute(
        select(edit_conflicts.c.created_by).where(edit_conflicts.c.id == conflict_id)
    ).first()
    if row is None:
        raise NotFound(f"conflict {conflict_id} does not exist")
    if row[0] != user.name and not user.at_least("planner"):
        raise Forbidden("only who reported a conflict, or a planner, may resolve it")
    updated = conn.execute(
        update(edit_conflicts)
        .where(edit_conflicts.c.id == conflict_id)
        .values(resolution=resolution, resolved_by=user.name, resolved_at=func.now())
        .returning(*edit_conflicts.c)
    ).one()
    return _record(updated._asdict())
