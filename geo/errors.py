"""Domain errors that the HTTP layer maps to statuses (one table in app/problems.py).

Messages are written for the person who sent the request: they name the field,
feature index, line or column that is wrong, and never echo personal data.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "MakaziError",
    "InvalidInput",
    "NotFound",
    "Conflict",
    "PreconditionFailed",
    "PreconditionRequired",
    "Forbidden",
    "TooLarge",
]


class MakaziError(Exception):
    """Base class: ``detail`` is the message, ``extra`` any extension members."""

    slug = "error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidInput(MakaziError):
    """The request is well-formed HTTP but its content is wrong (400/422)."""

    slug = "invalid-input"

    def __init__(self, detail: str, *, status: int = 422, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.status = status


class NotFound(MakaziError):
    """No such resource, or not one the caller may see (404)."""

    slug = "not-found"


class Conflict(MakaziError):
    """The write clashes with existing data, e.g. a duplicate structure number (409)."""

    slug = "conflict"


class PreconditionFailed(MakaziError):
    """``If-Match`` names a version that is no longer current (412)."""

    slug = "stale-version"

    def __init__(self, detail: str, *, current_version: int | None = None, **extra: Any) -> None:
        super().__init__(detail, current_version=current_version, **extra)
        self.current_version = current_version


class PreconditionRequired(MakaziError):
    """A write that needs ``If-Match`` came without it (428)."""

    slug = "if-match-required"


class Forbidden(MakaziError):
    """The caller is known but may not do this (403)."""

    slug = "forbidden"


class TooLarge(MakaziError):
    """The input exceeds a configured limit (413)."""

    slug = "too-large"
