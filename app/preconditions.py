"""``If-Match`` / ``ETag`` handling shared by every versioned resource."""

from __future__ import annotations

from geo.errors import PreconditionRequired

__all__ = ["expected_version", "etag"]


def etag(version: int) -> str:
    """The strong ETag of a version."""
    return f'"{version}"'


def expected_version(if_match: str | None) -> int | None:
    """The version an ``If-Match`` header names; None for ``*``.

    Raises
    ------
    PreconditionRequired
        Without the header (428): writes must say which version they change.
    """
    if if_match is None or not if_match.strip():
        raise PreconditionRequired(
            "this write needs an If-Match header with the version you read (its ETag); "
            "read the resource first"
        )
    value = if_match.strip()
    if value == "*":
        return None
    value = value.removeprefix("W/").strip('"')
    if not value.isdigit():
        return -1  # matches no version: the 412 names the current one
    return int(value)
