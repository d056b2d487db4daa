"""``ETag``, ``If-Match`` and ``If-None-Match``: the one parser for every versioned resource."""

from __future__ import annotations

from types import MappingProxyType
from typing import Annotated

from fastapi import Depends, Header

from geo.core.errors import PreconditionRequired

__all__ = [
    "NO_STORE",
    "ExpectedVersion",
    "OptionalVersion",
    "etag",
    "expected_version",
    "none_match",
]


NO_STORE = MappingProxyType({"Cache-Control": "private, no-store"})
"""Headers for answers no cache may keep (personal fields, tokens, downloads)."""


def etag(version: int) -> str:
    """The strong ETag of a version.

    >>> etag(3)
    '"3"'
    """
    return f'"{version}"'


def _opaque(tag: str) -> str:
    return tag.strip().removeprefix("W/")


def none_match(if_none_match: str | None, current: str) -> bool:
    """Whether ``If-None-Match`` names ``current`` (weak comparison, ``*`` matches any).

    >>> none_match('W/"7", "9"', '"9"'), none_match(None, '"9"'), none_match("*", '"1"')
    (True, False, True)
    """
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    return _opaque(current) in {_opaque(tag) for tag in if_none_match.split(",")}


def expected_version(if_match: str | None, *, required: bool = True) -> int | None:
    """The version an ``If-Match`` header names; None for ``*`` (or no header when optional).

    Raises
    ------
    PreconditionRequired
        Without the header where it is required (428): writes must say which
        version they change.

    A weak tag (``W/"4"``) names no version: ``If-Match`` compares strongly
    (RFC 9110, 13.1.1), so it answers 412 like a stale one.

    >>> expected_version('"4"'), expected_version("*"), expected_version('W/"4"')
    (4, None, -1)
    """
    if if_match is None or not if_match.strip():
        if not required:
            return None
        raise PreconditionRequired(
            "this write needs an If-Match header with the version you read (its ETag); "
            "read the resource first"
        )
    value = if_match.strip()
    if value == "*":
        return None
    value = value.strip('"')
    if not value.isdigit():
        return -1  # matches no version: the 412 names the current one
    return int(value)


async def _required(if_match: Annotated[str | None, Header()] = None) -> int | None:
    return expected_version(if_match)


async def _optional(if_match: Annotated[str | None, Header()] = None) -> int | None:
    return expected_version(if_match, required=False)


ExpectedVersion = Annotated[int | None, Depends(_required)]
"""The version a write's required ``If-Match`` names (428 without the header)."""

OptionalVersion = Annotated[int | None, Depends(_optional)]
"""The version an optional ``If-Match`` names, or None."""
