"""Typed contracts of JSON documents: the base classes, the problem document and health.

Each feature describes the documents it answers in its own module
(:mod:`geo.layers.documents`, :mod:`geo.traces.documents`, :mod:`geo.analysis.documents`,
...), built on :class:`Document` (a closed object: no member beyond those
declared) or :class:`OpenDocument` (extension members allowed).  The models
document the HTTP answers (the OpenAPI document at ``/api``) and let the tests
validate real answers against them; the code that builds an answer does not
go through them, so a model can never change or fail a live response.

A member that is sometimes left out (never sent as ``null``) is declared
``X | Omitted = omitted()``: optional in the schema, without a ``null`` type.

>>> Problem.model_validate({"type": "about:blank", "title": "Not Found", "status": 404,
...                         "detail": "no resource at /x", "instance": "/x"}).status
404
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

__all__ = [
    "Document",
    "FieldError",
    "Health",
    "Omitted",
    "OpenDocument",
    "Problem",
    "TokenCreated",
    "TokenEntry",
    "TokenList",
    "omitted",
]

Omitted = SkipJsonSchema[None]
"""``X | Omitted``: the member may be absent, but is never ``null`` (see :func:`omitted`)."""


def _without_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def omitted(description: str | None = None) -> Any:
    """The default of a member that is left out rather than sent as ``null``."""
    return Field(default=None, description=description, json_schema_extra=_without_default)


class Document(BaseModel):
    """A JSON object with exactly the declared members."""

    model_config = ConfigDict(extra="forbid")


class OpenDocument(BaseModel):
    """A JSON object with the declared members and possibly others (extensions)."""

    model_config = ConfigDict(extra="allow")


class FieldError(Document):
    """One invalid part of a request: where it is and what is wrong."""

    field: str = Field(description="Dotted location, e.g. ``query.limit`` or ``buffer_m``")
    reason: str


class Problem(OpenDocument):
    """An error answer, ``application/problem+json`` (RFC 9457).

    Besides the standard members a problem may carry extension members that
    say more: ``errors`` (validation), ``field``, ``current_version`` (412),
    ``line``/``column``/``member`` (GPX), ``index`` (a feature in a
    collection), ``limit_bytes`` (413), ``dropped`` (a trace without points).
    """

    type: str = Field(description="``/problems/<slug>``, or ``about:blank``")
    title: str = Field(description="The HTTP status phrase")
    status: int = Field(description="The HTTP status code")
    detail: str = Field(description="What went wrong, for a person")
    instance: str | Omitted = omitted("The request path")
    request_id: str | Omitted = omitted("Also in the X-Request-ID header; quote it in reports")
    errors: list[FieldError] | Omitted = omitted("Each invalid part of the request")
    field: str | Omitted = omitted("The field at fault")
    current_version: int | Omitted = omitted("The current version (412), also the ETag")
    line: int | Omitted = omitted("Line of the uploaded file at fault")
    column: int | Omitted = omitted("Column of the uploaded file at fault")
    member: str | Omitted = omitted("File inside the uploaded archive at fault")
    index: int | Omitted = omitted("Feature of a collection at fault (0-based)")
    limit_bytes: int | Omitted = omitted("The size limit exceeded (413)")


class Health(Document):
    """``GET /healthz``: the service and its database answer."""

    status: Literal["ok"]


class TokenEntry(Document):
    """One API token as an admin sees it (never the token itself)."""

    name: str
    role: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    expires_at: datetime | None = Field(default=None, description="null: never expires")


class TokenList(Document):
    """``GET /tokens``: live tokens first, then by name."""

    tokens: list[TokenEntry]


class TokenCreated(Document):
    """``POST /tokens``: the new token, shown this once (only its hash is stored)."""

    name: str
    role: str
    token: str = Field(description="The bearer token; shown only in this answer")
    expires_at: datetime | None = Field(default=None, description="null: never expires")
