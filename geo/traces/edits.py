"""Changing traces: rename, change visibility or settlement, soft delete, purge (owner or admin)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from geo.core.auth import Principal
from geo.core.errors import Forbidden, InvalidInput, NotFound, PreconditionFailed
from geo.core.privacy import Visibility
from geo.traces.reads import get_trace, visible_trace

__all__ = ["delete_trace", "owned_trace", "patch_trace", "purge_trace"]


# ----------------------------------------------------------------------- writes
def owned_trace(conn: Connection, trace_id: int, user: Principal, action: str) -> Any:
    """The live trace if ``user`` owns it or is an admin (403; 404 when not visible)."""
    row = visible_trace(conn, trace_id, user)
    if row.owner != user.name and not user.at_least("admin"):
        raise Forbidden(f"only the trace's owner or an admin may {action} trace {trace_id}")
    return row


def _check_version(row: Any, expected: int | None, trace_id: int) -> None:
    if expected is not None and int(row.version) != expected:
        raise PreconditionFailed(
            f"trace {trace_id} is at version {row.version}; your If-Match is stale",
            current_version=int(row.version),
        )


def delete_trace(
    conn: Connection, *, trace_id: int, user: Principal, expected_version: int | None = None
) -> None:
    """Soft-delete a trace (owner or admin); its bytes stay for the audit trail."""
    row = owned_trace(conn, trace_id, user, "delete")
    _check_version(row, expected_version, trace_id)
    conn.execute(
        text("UPDATE traces SET deleted_at = now() WHERE id = :id AND deleted_at IS NULL"),
        {"id": trace_id},
    )


def purge_trace(conn: Connection, *, trace_id: int, user: Principal) -> None:
    """Remove a trace for good (owner or admin), live or already soft-deleted.

    Its row, points, segments and original bytes go; its history rows (which
    hold its name, stats and bounding box) are replaced by one ``purge`` row
    that says only who purged it and when; a stored answer to its upload (for
    ``Idempotency-Key`` replays) goes too. Tiles drop it at commit (the
    change counters move as for any delete).
    """
    row = conn.execute(
        text("SELECT owner, deleted_at FROM traces WHERE id = :id"), {"id": trace_id}
    ).first()
    if row is None:
        raise NotFound(f"trace {trace_id} does not exist")
    if row.deleted_at is None:
        owned_trace(conn, trace_id, user, "purge")
    elif row.owner != user.name and not user.at_least("admin"):
        raise NotFound(f"trace {trace_id} does not exist or is not yours")
    steps = (
        "SELECT set_config('makazi.audit', 'off', true)",
        "DELETE FROM traces WHERE id = :id",
        "SELECT set_config('makazi.audit', 'on', true)",
        """
        WITH gone AS (
            DELETE FROM feature_history WHERE collection = 'traces' AND feature_id = :id
            RETURNING version
        )
        INSERT INTO feature_history (collection, feature_id, version, action, changed_by, changes)
        SELECT 'traces', :id, coalesce(max(version), 0) + 1, 'purge', makazi_actor(), '{}'::jsonb
        FROM gone
        """,
        """
        DELETE FROM idempotency_keys
        WHERE principal = :owner AND scope = 'POST /traces' AND body IS NOT NULL
          AND convert_from(body, 'UTF8') ~ ('"id": ?' || :id || '[,}]')
        """,
    )
    for step in steps:
        conn.execute(text(step), {"id": trace_id, "owner": row.owner})


def patch_trace(
    conn: Connection,
    *,
    trace_id: int,
    user: Principal,
    fields: dict[str, Any],
    expected_version: int | None,
) -> dict[str, Any]:
    """Change ``name``, ``visibility`` or ``settlement_id`` (owner or admin)."""
    if not isinstance(fields, dict) or not fields:
        raise InvalidInput("the body must be a JSON object with name, visibility or settlement_id")
    unknown = sorted(set(fields) - {"name", "visibility", "settlement_id"})
    if unknown:
        raise InvalidInput(
            f"cannot change {', '.join(unknown)}; only name, visibility and settlement_id",
            field=unknown[0],
        )
    values: dict[str, Any] = {}
    if "name" in fields:
        name = fields["name"]
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= 300:
            raise InvalidInput("name must be a string of 1 to 300 characters", field="name")
        values["name"] = name.strip()
    if "visibility" in fields:
        if fields["visibility"] not in set(Visibility):
            raise InvalidInput(
                f"visibility must be one of {', '.join(Visibility)}", field="visibility"
            )
        values["visibility"] = fields["visibility"]
    if "settlement_id" in fields:
        sid = fields["settlement_id"]
        if sid is not None and (not isinstance(sid, int) or isinstance(sid, bool)):
            raise InvalidInput("settlement_id must be an integer or null", field="settlement_id")
        if (
            sid is not None
            and conn.execute(
                text("SELECT 1 FROM settlements WHERE id = :i AND deleted_at IS NULL"), {"i": sid}
            ).first()
            is None
        ):
            raise InvalidInput(f"settlement_id {sid} does not exist", field="settlement_id")
        values["settlement_id"] = sid
    row = owned_trace(conn, trace_id, user, "change")
    _check_version(row, expected_version, trace_id)
    assignments = ", ".join(f"{column} = :{column}" for column in values)  # fixed names
    updated = conn.execute(
        text(
            f"UPDATE traces SET {assignments} WHERE id = :id AND version = :v "  # noqa: S608
            "AND deleted_at IS NULL RETURNING id"
        ),
        {**values, "id": trace_id, "v": int(row.version)},
    ).first()
    if updated is None:  # changed between the read and the write
        current = visible_trace(conn, trace_id, user)
        _check_version(current, int(row.version), trace_id)
    return get_trace(conn, trace_id=trace_id, user=user)
