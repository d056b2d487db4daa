"""The OpenAPI document in version 3.0 form, as OGC API "oas30" clients expect.

FastAPI writes OpenAPI 3.1; the differences that matter here are few: 3.0
has no ``{"type": "null"}`` (it uses ``nullable: true``) and takes ``example``
rather than an ``examples`` list in schemas.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

__all__ = ["install_openapi30", "downgrade_schema"]


def downgrade_schema(node: Any) -> Any:
    """Rewrite 3.1 JSON-schema constructs into their 3.0 equivalents, recursively."""
    if isinstance(node, list):
        return [downgrade_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: downgrade_schema(value) for key, value in node.items()}
    for key in ("anyOf", "oneOf"):
        options = out.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [option for option in options if option != {"type": "null"}]
            out.pop(key)
            if len(rest) == 1:
                out.update(rest[0])
            else:
                out[key] = rest
            out["nullable"] = True
    examples = out.get("examples")
    if isinstance(examples, list) and "schema" not in out and "value" not in out:
        out.pop("examples")
        if examples:
            out["example"] = examples[0]
    if "const" in out:
        out["enum"] = [out.pop("const")]
    return out


def install_openapi30(app: FastAPI) -> None:
    """Make ``app.openapi()`` return (and cache) a 3.0.3 document."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema = downgrade_schema(schema)
            schema["openapi"] = "3.0.3"
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]
