"""The OpenAPI document in version 3.0 form, as OGC API "oas30" clients expect.

FastAPI writes OpenAPI 3.1; the differences that matter here are few: 3.0
has no ``{"type": "null"}`` (it uses ``nullable: true``), takes ``example``
rather than an ``examples`` list in schemas, has no ``const``, writes
``exclusiveMinimum``/``exclusiveMaximum`` as booleans beside ``minimum``/``maximum``,
and ignores the siblings of a ``$ref`` (so a described ``$ref`` becomes an
``allOf`` of one).

Every operation's error answers are documented here too, once for all routes:
``application/problem+json`` with the :class:`~geo.core.documents.Problem`
schema, for the ``4XX`` and ``5XX`` ranges and for every error status a route
names (FastAPI's own 422 body, which this service never sends, is left out).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.problems import PROBLEM_JSON
from geo.core.documents import Problem
from geo.layers.registry import COLLECTIONS

__all__ = [
    "add_problem_responses",
    "describe_paging",
    "downgrade_schema",
    "install_openapi30",
]

REF_PREFIX = "#/components/schemas/"
_NAME_MAPS = frozenset({"properties", "patternProperties", "schemas", "$defs", "definitions"})
_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")
_RANGES = {
    "4XX": "The request cannot be answered as it is: a problem document says why",
    "5XX": "The service cannot answer now (database unavailable, timeout, unexpected error)",
}


def downgrade_schema(node: Any, *, names: bool = False) -> Any:
    """Rewrite 3.1 JSON-schema constructs into their 3.0 equivalents, recursively.

    ``names`` marks a map of names to schemas (``properties``, ``schemas``...):
    its keys are names, never keywords.

    >>> downgrade_schema({"anyOf": [{"type": "integer"}, {"type": "null"}], "title": "N"})
    {'title': 'N', 'type': 'integer', 'nullable': True}
    >>> downgrade_schema({"anyOf": [{"enum": ["a"], "type": "string"}, {"type": "null"}]})
    {'enum': ['a', None], 'type': 'string', 'nullable': True}
    >>> downgrade_schema({"type": "number", "exclusiveMinimum": 0})
    {'type': 'number', 'exclusiveMinimum': True, 'minimum': 0}
    >>> downgrade_schema({"$ref": "#/components/schemas/Link", "description": "a link"})
    {'description': 'a link', 'allOf': [{'$ref': '#/components/schemas/Link'}]}
    >>> downgrade_schema({"properties": {"const": {"const": 1}}})
    {'properties': {'const': {'enum': [1]}}}
    """
    if isinstance(node, list):
        return [downgrade_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    if names:
        return {key: downgrade_schema(value) for key, value in node.items()}
    out = {key: downgrade_schema(value, names=key in _NAME_MAPS) for key, value in node.items()}
    for key in ("anyOf", "oneOf"):
        options = out.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [option for option in options if option != {"type": "null"}]
            out.pop(key)
            if len(rest) == 1 and "$ref" in rest[0]:
                out["allOf"] = rest
            elif len(rest) == 1:
                out.update(rest[0])
            else:
                out[key] = rest
            out["nullable"] = True
            if isinstance(out.get("enum"), list) and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]  # 3.0.3: other keywords may still refuse null
    examples = out.get("examples")
    if isinstance(examples, list) and "schema" not in out and "value" not in out:
        out.pop("examples")
        if examples:
            out["example"] = examples[0]
    if "const" in out:
        out["enum"] = [out.pop("const")]
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = out.get(exclusive)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[exclusive] = True
            out[bound] = value
    if "$ref" in out and len(out) > 1:
        ref = {"$ref": out.pop("$ref")}
        out["allOf"] = [ref, *out.get("allOf", [])]
    return out


def _is_error(status: str) -> bool:
    return status[:1] in ("4", "5")


def _fastapi_validation(response: dict[str, Any]) -> bool:
    """Whether ``response`` is FastAPI's default 422 (a body this service never sends)."""
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return bool(schema.get("$ref") == REF_PREFIX + "HTTPValidationError")


def _uses(node: Any, ref: str) -> bool:
    if isinstance(node, dict):
        return node.get("$ref") == ref or any(_uses(value, ref) for value in node.values())
    if isinstance(node, list):
        return any(_uses(item, ref) for item in node)
    return False


def add_problem_responses(document: dict[str, Any]) -> dict[str, Any]:
    """Document every operation's errors as problem documents (in place; returns it).

    The :class:`Problem` schema (and those it uses) join ``components``; each
    operation gets ``4XX`` and ``5XX`` answers, and each error status a route
    names without a body gets the problem body.
    """
    schemas: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    problem = Problem.model_json_schema(ref_template=REF_PREFIX + "{model}", mode="serialization")
    for name, schema in problem.pop("$defs", {}).items():
        schemas.setdefault(name, schema)
    schemas.setdefault(Problem.__name__, problem)
    ref = {"$ref": REF_PREFIX + Problem.__name__}
    for path_item in document.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in _METHODS:
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            for status in [status for status in responses if _is_error(status)]:
                response = responses[status]
                if _fastapi_validation(response):
                    del responses[status]
                elif not response.get("content"):
                    response["content"] = {PROBLEM_JSON: {"schema": dict(ref)}}
            for status, description in _RANGES.items():
                responses.setdefault(
                    status,
                    {"description": description, "content": {PROBLEM_JSON: {"schema": dict(ref)}}},
                )
    for name in _FASTAPI_VALIDATION:
        others = {key: value for key, value in schemas.items() if key != name}
        if name in schemas and not _uses([document.get("paths"), others], REF_PREFIX + name):
            del schemas[name]
    return document


ITEMS_PATH = "/collections/{collection_id}/items"


def _standard_parameters(*, default: int, maximum: int) -> dict[str, dict[str, Any]]:
    """``limit``, ``bbox`` and ``datetime`` as OGC API - Features Part 1 defines them."""
    form = {"in": "query", "required": False, "style": "form", "explode": False}
    return {
        "limit": {
            "name": "limit",
            **form,
            "description": "Features per page; a larger value is clamped to the maximum",
            "schema": {"type": "integer", "minimum": 1, "maximum": maximum, "default": default},
        },
        "bbox": {
            "name": "bbox",
            **form,
            "description": "minx,miny,maxx,maxy (or with heights) in bbox-crs",
            "schema": {
                "type": "array",
                "minItems": 4,
                "maxItems": 6,
                "items": {"type": "number"},
            },
        },
        "datetime": {
            "name": "datetime",
            **form,
            "description": "An instant or an interval (a/b, open ends as ..), RFC 3339",
            "schema": {"type": "string"},
        },
    }


def describe_paging(
    document: dict[str, Any], *, collections: Iterable[str], default: int, maximum: int
) -> None:
    """Declare paging and the standard query parameters the way GIS clients read them.

    ``limit``, ``bbox`` and ``datetime`` query parameters become references to
    ``components/parameters`` defined as OGC API - Features Part 1 says, with the
    configured ``default`` and ``maximum`` page size (a larger ``limit`` is still
    clamped, never refused).  Each collection also gets its own
    ``/collections/<name>/items`` path, a copy of the templated one: GDAL's OAPIF
    driver looks its items path up literally and sizes its pages from that
    ``limit`` (ten features a page when it finds none), and the OGC test suite
    checks the parameters there.  The document is changed in place.
    """
    standard = _standard_parameters(default=default, maximum=maximum)
    document.setdefault("components", {}).setdefault("parameters", {}).update(standard)
    paths: dict[str, Any] = document.get("paths", {})
    for path_item in paths.values():
        get = path_item.get("get", {})
        get["parameters"] = [
            {"$ref": f"#/components/parameters/{parameter['name']}"}
            if parameter.get("in") == "query" and parameter.get("name") in standard
            else parameter
            for parameter in get.get("parameters", [])
        ]
    templated = paths.get(ITEMS_PATH, {}).get("get")
    if templated is None:
        return
    for name in collections:
        operation = copy.deepcopy(templated)
        operation["operationId"] = f"{templated.get('operationId', 'get_items')}_{name}"
        operation["summary"] = f"{templated.get('summary', 'Features')}: {name}"
        operation["parameters"] = [
            parameter
            for parameter in operation.get("parameters", [])
            if parameter.get("name") != "collection_id"
        ]
        paths[f"/collections/{name}/items"] = {"get": operation}


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
            schema = downgrade_schema(add_problem_responses(schema))
            settings = app.state.settings
            describe_paging(
                schema,
                collections=COLLECTIONS,
                default=settings.items_default_limit,
                maximum=settings.items_max_limit,
            )
            schema["openapi"] = "3.0.3"
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]
