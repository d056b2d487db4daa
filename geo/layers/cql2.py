"""CQL2 filters (OGC API - Features Part 3) compiled to parameterised SQL.

Text and JSON encodings are parsed by the ``cql2`` package into CQL2-JSON;
this module walks that tree and builds a SQLAlchemy expression in which every
literal is a bound parameter and every property is looked up in the
collection's registry, so no user text is ever spliced into SQL.

Supported: basic CQL2 (comparisons, AND/OR/NOT, IS NULL), advanced
comparison (LIKE, BETWEEN, IN), case-insensitive comparison (CASEI), and the
spatial functions S_INTERSECTS, S_EQUALS, S_DISJOINT, S_TOUCHES, S_WITHIN,
S_OVERLAPS, S_CROSSES, S_CONTAINS on WKT, GeoJSON or BBOX literals.
"""

from __future__ import annotations

import json
import math
from datetime import date, datetime
from typing import Any

import cql2
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Float,
    Text,
    and_,
    bindparam,
    func,
    literal,
    not_,
    or_,
)
from sqlalchemy.dialects.postgresql import ARRAY

from geo.core.crs import Crs
from geo.core.errors import BadRequest
from geo.core.geojson import GEOJSON_TO_POSTGIS
from geo.layers.registry import Collection, Property

__all__ = ["FilterError", "parse_filter", "compile_filter", "MAX_FILTER_LENGTH"]

MAX_FILTER_LENGTH = 100_000
MAX_INTEGER = 2**62
GEOMETRY = "geometry"
_COMPARISONS = {"=", "<>", "<", ">", "<=", ">="}
_SPATIAL = {
    "s_intersects": "ST_Intersects",
    "s_equals": "ST_Equals",
    "s_disjoint": "ST_Disjoint",
    "s_touches": "ST_Touches",
    "s_within": "ST_Within",
    "s_overlaps": "ST_Overlaps",
    "s_crosses": "ST_Crosses",
    "s_contains": "ST_Contains",
}
_GEOJSON_TYPES = set(GEOJSON_TO_POSTGIS)


class FilterError(BadRequest):
    """A filter that cannot be parsed or names something unknown (400)."""

    slug = "invalid-filter"


def parse_filter(text: str, lang: str) -> dict[str, Any]:
    """Parse a ``filter`` parameter into CQL2-JSON.

    Parameters
    ----------
    text
        The filter as sent.
    lang
        ``cql2-text`` or ``cql2-json``.

    Raises
    ------
    FilterError
        With the parser's position (line:column) for syntax errors.
    """
    if len(text) > MAX_FILTER_LENGTH:
        raise FilterError(f"filter is longer than {MAX_FILTER_LENGTH} characters")
    try:
        if lang == "cql2-text":
            parsed = cql2.parse_text(text)
        elif lang == "cql2-json":
            json.loads(text)  # a clearer message for plain JSON syntax errors
            parsed = cql2.parse_json(text)
        else:
            raise FilterError(f"filter-lang {lang!r} is not supported; use cql2-text or cql2-json")
    except json.JSONDecodeError as exc:
        raise FilterError(
            f"filter is not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    except (cql2.ParseError, ValueError) as exc:
        message = " ".join(str(exc).split())
        raise FilterError(f"filter does not parse as {lang}: {message}") from exc
    tree: dict[str, Any] = parsed.to_json()
    return tree


def compile_filter(
    tree: dict[str, Any] | bool, collection: Collection, filter_crs: Crs
) -> ColumnElement[bool]:
    """Turn a CQL2-JSON tree into a SQL condition on ``collection``'s table.

    Raises
    ------
    FilterError
        For unknown properties or functions and for values of the wrong type.
    """
    return _Compiler(collection, filter_crs).boolean(tree)


class _Compiler:
    def __init__(self, collection: Collection, crs: Crs) -> None:
        self.collection = collection
        self.crs = crs

    # ------------------------------------------------------------ references
    def _property(self, name: str) -> tuple[Property | None, ColumnElement[Any]]:
        table = self.collection.table
        if name == GEOMETRY:
            return None, table.c.geom
        if name == "id":
            return Property("id", "integer", writable=False), table.c.id
        prop = self.collection.find(name)
        if prop is None:
            known = ", ".join(["id", GEOMETRY, *(p.name for p in self.collection.properties)])
            raise FilterError(
                f"{name!r} is not a queryable of {self.collection.name}; queryables: {known}"
            )
        return prop, table.c[name]

    # ------------------------------------------------------------- booleans
    def boolean(self, node: Any) -> ColumnElement[bool]:
        if isinstance(node, bool):
            return literal(node)
        if not isinstance(node, dict) or "op" not in node:
            raise FilterError(f"expected a predicate, got {json.dumps(node)[:80]}")
        op = str(node["op"]).lower()
        args = node.get("args", [])
        if not isinstance(args, list):
            raise FilterError(f"arguments of {op} must be a list")
        if op in ("and", "or"):
            if len(args) < 2:
                raise FilterError(f"{op.upper()} needs at least two arguments")
            parts = [self.boolean(arg) for arg in args]
            return and_(*parts) if op == "and" else or_(*parts)
        if op == "not":
            self._arity(op, args, 1)
            return not_(self.boolean(args[0]))
        if op in _COMPARISONS:
            self._arity(op, args, 2)
            return self._compare(op, args[0], args[1])
        if op == "like":
            self._arity(op, args, 2)
            left, _ = self.scalar(args[0], None)
            pattern, _ = self.scalar(args[1], Property("pattern"))
            return left.cast(Text).like(pattern)
        if op == "between":
            self._arity(op, args, 3)
            left, prop = self.scalar(args[0], None)
            low, _ = self.scalar(args[1], prop)
            high, _ = self.scalar(args[2], prop)
            return left.between(low, high)
        if op == "in":
            self._arity(op, args, 2)
            left, prop = self.scalar(args[0], None)
            if not isinstance(args[1], list) or not args[1]:
                raise FilterError("IN needs a non-empty list of values")
            return left.in_([self.scalar(value, prop)[0] for value in args[1]])
        if op == "isnull":
            self._arity("IS NULL", args, 1)
            left, _ = self.scalar(args[0], None)
            return left.is_(None)
        if op in _SPATIAL:
            self._arity(op.upper(), args, 2)
            first, second = (self.geometry(arg) for arg in args)
            function = getattr(func, _SPATIAL[op])
            condition: ColumnElement[bool] = function(first, second)
            return condition
        raise FilterError(
            f"unsupported CQL2 operator or function {node['op']!r}; supported: AND, OR, NOT, "
            "=, <>, <, >, <=, >=, LIKE, BETWEEN, IN, IS NULL, CASEI, "
            + ", ".join(name.upper() for name in _SPATIAL)
        )

    @staticmethod
    def _arity(op: str, args: list[Any], count: int) -> None:
        if len(args) != count:
            raise FilterError(f"{op} takes {count} argument(s), got {len(args)}")

    def _compare(self, op: str, a: Any, b: Any) -> ColumnElement[bool]:
        left, prop = self.scalar(a, None)
        right, prop_b = self.scalar(b, prop)
        if prop is None and prop_b is not None:
            left, _ = self.scalar(a, prop_b)
        result: ColumnElement[bool]
        if op == "=":
            result = left == right
        elif op == "<>":
            result = left != right
        elif op == "<":
            result = left < right
        elif op == ">":
            result = left > right
        elif op == "<=":
            result = left <= right
        else:
            result = left >= right
        return result

    # --------------------------------------------------------------- scalars
    def scalar(
        self, node: Any, like: Property | None
    ) -> tuple[ColumnElement[Any], Property | None]:
        """A scalar expression; literals are typed after the property they meet."""
        if isinstance(node, dict):
            if "property" in node:
                name = str(node["property"])
                if name == GEOMETRY:
                    raise FilterError("geometry can only be used in spatial functions")
                prop, column = self._property(name)
                return column, prop
            op = str(node.get("op", "")).lower()
            if op == "casei":
                self._arity("CASEI", node.get("args", []), 1)
                inner, prop = self.scalar(node["args"][0], like)
                return func.lower(inner.cast(Text)), prop
            if "timestamp" in node or "date" in node:
                return self._literal(node.get("timestamp", node.get("date")), "datetime"), like
            raise FilterError(f"unsupported expression {json.dumps(node)[:80]}")
        if isinstance(node, list):
            raise FilterError("a list is only allowed as the right side of IN")
        kind = like.kind if like is not None else None
        if like is not None and isinstance(node, str):
            # CASEI compares case-blind, so an enum value in another case is still a value
            wrong = like.choice_error(node, ignore_case=True)
            if wrong is not None:
                raise FilterError(wrong)
        return self._literal(node, kind), like

    def _literal(self, value: Any, kind: str | None) -> ColumnElement[Any]:
        if value is None:
            raise FilterError("compare with NULL using IS NULL")
        if kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise FilterError(f"expected a number, got {json.dumps(value)}")
            if not math.isfinite(value) or abs(value) > MAX_INTEGER:
                raise FilterError(
                    f"{json.dumps(value)} is out of range for a whole-number property"
                )
            if isinstance(value, float) and not value.is_integer():
                return bindparam(None, value, type_=Float)
            return bindparam(None, int(value), type_=BigInteger)
        if kind == "number":
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise FilterError(f"expected a number, got {json.dumps(value)}")
            return bindparam(None, float(value), type_=Float)
        if kind == "datetime":
            return bindparam(None, _parse_instant(value))
        if kind == "string-array":
            return bindparam(None, [str(value)], type_=ARRAY(Text))
        if kind in ("string", None) and isinstance(value, str):
            return bindparam(None, value, type_=Text)
        if isinstance(value, bool):
            return literal(value)
        if isinstance(value, int | float) and kind is None:
            return bindparam(None, value)
        raise FilterError(f"expected text, got {json.dumps(value)}")

    # ------------------------------------------------------------- geometry
    def geometry(self, node: Any) -> ColumnElement[Any]:
        if isinstance(node, dict) and node.get("property") == GEOMETRY:
            return self.collection.table.c.geom
        if isinstance(node, dict) and "property" in node:
            raise FilterError(
                f"{node['property']!r} is not a geometry; the geometry queryable is 'geometry'"
            )
        if isinstance(node, dict) and "bbox" in node:
            box = node["bbox"]
            if not isinstance(box, list) or len(box) not in (4, 6):
                raise FilterError("BBOX takes 4 or 6 numbers")
            x1, y1, x2, y2 = (box[0], box[1], box[3], box[4]) if len(box) == 6 else box
            if self.crs.swap_axes:
                x1, y1, x2, y2 = y1, x1, y2, x2
            envelope = func.ST_MakeEnvelope(
                bindparam(None, float(x1)),
                bindparam(None, float(y1)),
                bindparam(None, float(x2)),
                bindparam(None, float(y2)),
                self.crs.srid,
            )
            return func.ST_Transform(envelope, 4326)
        if isinstance(node, dict) and node.get("type") in _GEOJSON_TYPES:
            parsed = func.ST_GeomFromGeoJSON(bindparam(None, json.dumps(node), type_=Text))
            if self.crs.swap_axes:
                parsed = func.ST_FlipCoordinates(parsed)
            return func.ST_Transform(func.ST_SetSRID(parsed, self.crs.srid), 4326)
        raise FilterError(f"expected a geometry, got {json.dumps(node)[:80]}")


def _parse_instant(value: Any) -> datetime:
    if not isinstance(value, str):
        raise FilterError(f"expected a timestamp, got {json.dumps(value)}")
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day)
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise FilterError(f"{value!r} is not an RFC 3339 timestamp or date") from exc
