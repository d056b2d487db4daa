"""Domain errors, each carrying its HTTP status: the one error table.

Every class names its ``status`` and ``slug`` (the problem ``type`` is
``/problems/<slug>``); ``app/problems.py`` turns any of them into
``application/problem+json`` without choosing a status of its own.  Messages
are written for the person who sent the request: they name the field,
feature index, line or column that is wrong, and never echo personal data.

>>> [(kind.__name__, kind.status) for kind in (BadRequest, NotFound, PreconditionFailed)]
[('BadRequest', 400), ('NotFound', 404), ('PreconditionFailed', 412)]
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "InsufficientStorage",
    "InvalidInput",
    "MakaziError",
    "MethodNotAllowed",
    "NotFound",
    "PreconditionFailed",
    "PreconditionRequired",
    "TooLarge",
    "Unauthorised",
    "Unavailable",
    "TooManyRequests",
    "UnsupportedMediaType",
]


class MakaziError(Exception):
    """Base class: ``detail`` is the message, ``extra`` any extension members.

    Parameters
    ----------
    detail
        What went wrong, for a person.
    slug
        A more specific kind than the class's own (``/problems/<slug>``).
    headers
        Response headers the answer needs (``Allow``, ``WWW-Authenticate``...).
    extra
        Extension members of the problem document (``field``, ``errors``...);
        members whose value is None are left out.
    """

    status: ClassVar[int] = 400
    slug: str = "error"

    def __init__(
        self,
        detail: str,
        *,
        slug: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if slug is not None:
            self.slug = slug
        self.headers = dict(headers or {})
        self.extra = extra


class BadRequest(MakaziError):
    """A malformed request: a parameter, header or body that cannot be read (400)."""

    status = 400
    slug = "bad-request"


class InvalidInput(MakaziError):
    """A well-formed request whose content is wrong, e.g. a bad field value (422)."""

    status = 422
    slug = "invalid-input"


class Unauthorised(MakaziError):
    """No valid bearer token where one is needed (401)."""

    status = 401
    slug = "unauthorised"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="makazi"'}, **extra)


class Forbidden(MakaziError):
    """The caller is known but may not do this (403)."""

    status = 403
    slug = "forbidden"


class NotFound(MakaziError):
    """No such resource, or not one the caller may see (404)."""

    status = 404
    slug = "not-found"


class MethodNotAllowed(MakaziError):
    """The resource exists but does not take this method (405)."""

    status = 405
    slug = "method-not-allowed"

    def __init__(self, detail: str, *, allow: str, **extra: Any) -> None:
        super().__init__(detail, headers={"Allow": allow}, **extra)


class Conflict(MakaziError):
    """The write clashes with existing data, e.g. a duplicate structure number (409)."""

    status = 409
    slug = "conflict"


class PreconditionFailed(MakaziError):
    """``If-Match`` names a version that is no longer current (412, with the current ETag)."""

    status = 412
    slug = "stale-version"

    def __init__(self, detail: str, *, current_version: int | None = None, **extra: Any) -> None:
        headers = {"ETag": f'"{current_version}"'} if current_version is not None else None
        super().__init__(detail, headers=headers, current_version=current_version, **extra)
        self.current_version = current_version


class TooLarge(MakaziError):
    """The input exceeds a configured limit (413)."""

    status = 413
    slug = "too-large"


class UnsupportedMediaType(MakaziError):
    """The body's ``Content-Type`` is not one this resource reads (415)."""

    status = 415
    slug = "unsupported-media-type"


class PreconditionRequired(MakaziError):
    """A write that needs ``If-Match`` came without it (428)."""

    status = 428
    slug = "if-match-required"


class TooManyRequests(MakaziError):
    """Too many attempts from one client in a short time; retry after a pause (429)."""

    status = 429
    slug = "too-many-requests"

    def __init__(self, detail: str, *, retry_after_s: int, **extra: Any) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)}, **extra)


class Unavailable(MakaziError):
    """A dependency (the database) cannot answer now; retry shortly (503)."""

    status = 503
    slug = "unavailable"

    def __init__(self, detail: str, *, retry_after_s: int = 5, **extra: Any) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)}, **extra)


class InsufficientStorage(MakaziError):
    """The server has no room left to stage the upload (disk full): retry later (507)."""

    status = 507
    slug = "insufficient-storage"

    def __init__(self, detail: str, *, retry_after_s: int = 60, **extra: Any) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)}, **extra)
