"""Changing traces: rename, change visibility or settlement, soft delete (owner or admin)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from geo.core.auth import Principal
from geo.core.errors import Forbidden, InvalidInput, PreconditionFailed
from geo.core.privacy import Visibility
from geo.traces.reads import get_trace, visible_trace

__all__ = ["delete_trace", "patch_trace"]


# ----------------------------------------------------------------------- writes
def _owned(conn: Connection, trace_id: int, user: Principal, action: str) -> Any:
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
    row = _owned(conn, trace_id, user, "delete")
    _check_version(row, expected_version, trace_id)
    conn.execute(
        text("UPDATE traces SET deleted_at = now() WHERE id = :id AND deleted_at IS NULL"),
        {"id": trace_id},
    )


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
    row = _owned(conn, trace_id, user, "change")
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
