"""Reading features: query parameters to SQL, and GeoJSON bytes built by PostGIS.

Each Feature is written by PostgreSQL as one text value (``ST_AsGeoJSON`` for
the geometry, ``json_build_object`` for the properties, joined as text so the
geometry is never parsed again); Python only joins the rows' bytes with commas,
once.  Pages are keyset-paged on ``id`` (``after``/``before`` cursors), so page
5,000 costs what page 1 costs; an explicit ``sortby`` pages with an offset.  A
page in id order is read in one psycopg pipeline from SQL text written once per
set of conditions (:func:`page_text`, :func:`read_page`); ``sortby`` pages and
revalidations go through SQLAlchemy (:func:`open_page`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache, lru_cache
from typing import Any

import psycopg
from psycopg.types.string import ByteaBinaryLoader
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Select,
    Text,
    and_,
    bindparam,
    func,
    literal_column,
    select,
)
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.selectable import NamedFromClause
from sqlalchemy.sql.util import ClauseAdapter
from sqlalchemy.sql.visitors import InternalTraversal

from geo.core.auth import Principal
from geo.core.crs import CRS84, Crs, UnknownCrs, parse_crs
from geo.core.db import begin_is_ours, own_begin
from geo.core.errors import BadRequest
from geo.layers.cql2 import FilterError, compile_filter, parse_filter
from geo.layers.placement import swap_hint
from geo.layers.registry import Collection

__all__ = [
    "ItemsRequest",
    "Page",
    "feature_sql",
    "parse_items_request",
    "open_page",
    "count_if_cheap",
    "empty_bbox_hint",
    "fetch_feature",
    "base_statement",
    "start_page",
    "page_text",
    "read_page",
]

MAX_INTEGER = 2**62  # ids and counts fit in a bigint with room to spare
EXACT_COUNT_MAX_COST = 5_000.0  # planner cost units: a few milliseconds of work
RESERVED = {
    "limit",
    "bbox",
    "bbox-crs",
    "crs",
    "datetime",
    "filter",
    "filter-lang",
    "filter-crs",
    "sortby",
    "after",
    "before",
    "offset",
    "f",
    "skipGeometry",
}


def _bad(detail: str) -> BadRequest:
    return BadRequest(detail)


@dataclass
class ItemsRequest:
    """A parsed ``/items`` request."""

    collection: Collection
    user: Principal | None
    limit: int
    crs: Crs = CRS84
    where: list[ColumnElement[bool]] = field(default_factory=list)
    sortby: list[tuple[str, bool]] = field(default_factory=list)
    after: int | None = None
    before: int | None = None
    offset: int = 0
    skip_geometry: bool = False
    bbox_area: ColumnElement[Any] | None = None
    bbox_wkb: bytes | None = None
    """The bbox as WKB when it came in EPSG:4326 (the empty page's hint needs no round trip)."""

    @property
    def first_page(self) -> bool:
        """Whether this is the first page (no cursor, no offset)."""
        return self.after is None and self.before is None and self.offset == 0


def _crs(value: str | None, name: str) -> Crs:
    try:
        return parse_crs(value)
    except UnknownCrs as exc:
        raise _bad(f"{name}: {exc}") from exc


def _numbers(text_value: str, name: str) -> list[float]:
    try:
        values = [float(part) for part in text_value.split(",")]
    except ValueError as exc:
        raise _bad(f"{name} must be comma-separated numbers, got {text_value!r}") from exc
    if any(v != v or v in (float("inf"), float("-inf")) for v in values):
        raise _bad(f"{name} must be finite numbers")
    return values


@lru_cache(maxsize=256)
def _bbox_area(raw: str, crs: Crs) -> ColumnElement[Any]:
    """The bbox parameter as an envelope in EPSG:4326."""
    values = _numbers(raw, "bbox")
    if len(values) == 6:
        values = [values[0], values[1], values[3], values[4]]
    if len(values) != 4:
        raise _bad(f"bbox takes 4 (or 6) numbers, got {len(values)}")
    x1, y1, x2, y2 = values
    if crs.swap_axes:
        x1, y1, x2, y2 = y1, x1, y2, x2
    if x1 > x2 or y1 > y2:
        raise _bad(
            "bbox must be minx,miny,maxx,maxy with min <= max (antimeridian boxes are "
            "not supported)"
        )
    if crs.srid == 4326 and (abs(y1) > 90 or abs(y2) > 90):
        raise _bad("bbox latitude must lie within [-90, 90]")
    if crs.srid == 4326 and (abs(x1) > 180 or abs(x2) > 180):
        raise _bad("bbox longitude must lie within [-180, 180]")
    envelope = func.ST_MakeEnvelope(
        bindparam(None, x1),
        bindparam(None, y1),
        bindparam(None, x2),
        bindparam(None, y2),
        crs.srid,
    )
    if crs.srid != 4326:
        envelope = func.ST_Transform(envelope, 4326)
    return envelope


def _bbox_wkb(raw: str, crs: Crs) -> bytes:
    """An EPSG:4326 bbox (already checked by :func:`_bbox_area`) as a WKB polygon."""
    import shapely

    values = _numbers(raw, "bbox")
    x1, y1, x2, y2 = (values[0], values[1], values[3], values[4]) if len(values) == 6 else values
    if crs.swap_axes:
        x1, y1, x2, y2 = y1, x1, y2, x2
    return bytes(shapely.to_wkb(shapely.box(x1, y1, x2, y2)))


_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}([Tt ].*)?$")


def _instant(value: str) -> datetime | None:
    if value in ("..", ""):
        return None
    if not _INSTANT.match(value):
        raise _bad(f"datetime: {value!r} is not an RFC 3339 date-time")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise _bad(f"datetime: {value!r} is not an RFC 3339 date-time") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@lru_cache(maxsize=256)
def _datetime_condition(collection: Collection, raw: str) -> ColumnElement[bool]:
    column = collection.table.c[collection.temporal]
    if "/" in raw:
        start_text, _, end_text = raw.partition("/")
        start, end = _instant(start_text), _instant(end_text)
        if start is None and end is None:
            raise _bad("datetime: an interval needs at least one end")
        if start and end and start > end:
            raise _bad("datetime: the interval's start is after its end")
        parts = []
        if start is not None:
            parts.append(column >= bindparam(None, start))
        if end is not None:
            parts.append(column <= bindparam(None, end))
        return parts[0] if len(parts) == 1 else parts[0] & parts[1]
    moment = _instant(raw)
    if moment is None:
        raise _bad("datetime: give an instant or an interval")
    if len(raw) == 10:  # a whole day
        return func.date(column) == bindparam(None, moment.date())
    return column == bindparam(None, moment)


@lru_cache(maxsize=256)
def _property_condition(collection: Collection, name: str, raw: str) -> ColumnElement[bool]:
    prop = collection.find(name)
    column = collection.table.c[name] if name != "id" else collection.table.c.id
    kind = "integer" if name == "id" else (prop.kind if prop else "string")
    if kind in ("integer", "number"):
        values = _numbers(raw, name)
        if kind == "integer" and any(not v.is_integer() for v in values):
            raise _bad(f"{name} must be a whole number, got {raw!r}")
        if kind == "integer" and any(abs(v) > MAX_INTEGER for v in values):
            raise _bad(f"{name} is out of range, got {raw!r}")
        cast = [int(v) if kind == "integer" else v for v in values]
        return column.in_(cast) if len(cast) > 1 else column == cast[0]
    if kind == "datetime":
        moment = _instant(raw)
        return column == bindparam(None, moment)
    if kind == "string-array":
        return column.contains([raw])
    options = raw.split(",")
    for option in options:
        if prop is not None and (wrong := prop.choice_error(option)) is not None:
            raise BadRequest(wrong, field=name)
    return column.in_(options) if len(options) > 1 else column == raw


# The conditions below are cached by the query text they come from: conditions are
# immutable, and the same text giving the same object lets a page's SQL text be written
# once per condition (``_where_sql``) instead of compiled on every request.
@lru_cache(maxsize=256)
def _intersects(collection: Collection, area: ColumnElement[Any]) -> ColumnElement[bool]:
    return func.ST_Intersects(collection.table.c.geom, area)


@lru_cache(maxsize=256)
def _filter_condition(
    filter_text: str, lang: str, collection: Collection, crs: Crs
) -> ColumnElement[bool]:
    """A ``filter`` parameter as a SQL condition, parsed once per text (a client walking
    the pages of a filter sends the same text again; conditions are immutable)."""
    return compile_filter(parse_filter(filter_text, lang), collection, crs)


def parse_items_request(
    collection: Collection,
    params: list[tuple[str, str]],
    *,
    user: Principal | None,
    default_limit: int,
    max_limit: int,
) -> ItemsRequest:
    """Validate ``/items`` query parameters and turn them into SQL conditions.

    Parameters
    ----------
    params
        The query string as (name, value) pairs.

    Raises
    ------
    InvalidInput
        (400) naming the parameter that is wrong, including unknown ones.
    """
    seen: dict[str, str] = {}
    for name, value in params:
        if name in seen and name in RESERVED:
            raise _bad(f"parameter {name!r} is given more than once")
        seen[name] = value
    limit = default_limit
    if "limit" in seen:
        try:
            limit = int(seen["limit"])
        except ValueError as exc:
            raise _bad(f"limit must be a whole number, got {seen['limit']!r}") from exc
        if limit < 1:
            raise _bad("limit must be at least 1")
        limit = min(limit, max_limit)
    request = ItemsRequest(collection=collection, user=user, limit=limit)
    request.crs = _crs(seen.get("crs"), "crs")
    fmt = seen.get("f", "json").lower()
    if fmt not in ("json", "geojson"):
        raise _bad(f"f={fmt!r} is not offered for items; use f=json")
    request.skip_geometry = seen.get("skipGeometry", "false").lower() == "true"
    if "bbox" in seen:
        bbox_crs = _crs(seen.get("bbox-crs"), "bbox-crs")
        request.bbox_area = _bbox_area(seen["bbox"], bbox_crs)
        if bbox_crs.srid == 4326:
            request.bbox_wkb = _bbox_wkb(seen["bbox"], bbox_crs)
        request.where.append(_intersects(collection, request.bbox_area))
    elif "bbox-crs" in seen:
        raise _bad("bbox-crs given without bbox")
    if "datetime" in seen:
        request.where.append(_datetime_condition(collection, seen["datetime"].strip()))
    if "filter" in seen:
        lang = seen.get("filter-lang", "cql2-text")
        filter_crs = _crs(seen.get("filter-crs"), "filter-crs")
        request.where.append(_filter_condition(seen["filter"], lang, collection, filter_crs))
    elif "filter-lang" in seen and seen["filter-lang"] not in ("cql2-text", "cql2-json"):
        raise FilterError(f"filter-lang {seen['filter-lang']!r} is not supported")
    for name, value in seen.items():
        if name in RESERVED:
            continue
        if name != "id" and collection.find(name) is None:
            known = ", ".join(sorted(RESERVED | {p.name for p in collection.properties}))
            raise _bad(f"unknown query parameter {name!r}; known: {known}")
        request.where.append(_property_condition(collection, name, value))
    if "sortby" in seen:
        for part in seen["sortby"].split(","):
            part = part.strip()
            descending = part.startswith("-")
            name = part.lstrip("+-").strip()
            found = collection.find(name)
            if name != "id" and (found is None or found.kind == "string-array"):
                raise _bad(f"sortby: {name!r} is not a sortable property of {collection.name}")
            request.sortby.append((name, descending))
        if request.sortby == [("id", False)]:
            request.sortby = []
    for name in ("after", "before", "offset"):
        if name in seen:
            try:
                number = int(seen[name])
            except ValueError as exc:
                raise _bad(f"{name} must be a whole number") from exc
            if not 0 <= number <= MAX_INTEGER:
                raise _bad(f"{name} must be between 0 and {MAX_INTEGER}")
            setattr(request, name, number)
    if request.sortby and (request.after is not None or request.before is not None):
        raise _bad("after/before page by id; with sortby use offset")
    return request


@lru_cache(maxsize=64)
def feature_sql(collection: Collection, crs: Crs, *, skip_geometry: bool = False) -> str:
    """SQL text of one Feature as JSON text, for table alias ``t``.

    Every identifier comes from the registry; nothing from the request.
    """
    if skip_geometry:
        geometry = "'null'"
    else:
        if crs.srid == 4326:
            expression = "ST_FlipCoordinates(t.geom)" if crs.swap_axes else "t.geom"
            digits = 7
        else:
            expression = f"ST_Transform(t.geom, {int(crs.srid)})"
            digits = 2
        # options 0: RFC 7946 geometries have no "crs" member (PostGIS adds one by default
        # to any geometry not in EPSG:4326); Content-Crs says what the coordinates are
        geometry = f"coalesce(ST_AsGeoJSON({expression}, {digits}, 0), 'null')"
    # the id again as a property: GDAL (ogr2ogr from OAPIF, QGIS exports) renumbers features
    # 1..N and keeps only properties, so this is how Makazi's id survives a round trip
    pairs = ", ".join(["'id', t.id", *(f"'{p.name}', t.{p.name}" for p in collection.properties)])
    return (
        '\'{"type":"Feature","id":\' || t.id || \',"geometry":\' || '
        f"{geometry} || ',\"properties\":' || json_build_object({pairs})::text || '}}'"
    )


@cache
def _aliased(collection: Collection) -> tuple[NamedFromClause, ClauseAdapter]:
    """The collection's table as ``t`` and the adapter moving conditions onto it.

    Made once per collection: aliasing a table builds a proxy of every column, which
    cost more than the rest of a small page's SQL building together.
    """
    table = collection.table.alias("t")
    _ = table.c  # build the proxies now, before threads share the alias
    return table, ClauseAdapter(table)


def base_statement(request: ItemsRequest) -> Select[Any]:
    """``SELECT id, feature`` over the rows the request may see, unordered and unpaged."""
    table, adapter = _aliased(request.collection)
    feature = literal_column(
        feature_sql(request.collection, request.crs, skip_geometry=request.skip_geometry), Text
    )
    statement = select(table.c.id.label("id"), feature.label("feature")).select_from(table)
    # conditions were built on the unaliased table: adapt them to the alias
    conditions = [request.collection.visible(request.user), *request.where]
    for condition in conditions:
        statement = statement.where(adapter.traverse(condition))
    return statement


def _paged(request: ItemsRequest) -> Select[Any]:
    statement = base_statement(request)
    table = statement.selected_columns
    id_column = table[0]
    if request.sortby:
        from sqlalchemy import asc, desc

        froms = statement.get_final_froms()
        alias = froms[0]
        order = [
            (desc if descending else asc)(alias.c[name]).nulls_last()
            for name, descending in request.sortby
        ]
        return statement.order_by(*order, id_column).limit(request.limit + 1).offset(request.offset)
    if request.before is not None:
        inner = (
            statement.where(id_column < bindparam("before", request.before, type_=BigInteger))
            .order_by(id_column.desc())
            .limit(request.limit)
            .subquery("page")
        )
        return select(inner.c.id, inner.c.feature).order_by(inner.c.id)
    if request.after is not None:
        statement = statement.where(id_column > bindparam("after", request.after, type_=BigInteger))
    return statement.order_by(id_column).limit(request.limit + 1).offset(request.offset)


@dataclass
class Page:
    """An open page of features: take its :meth:`texts` once, then read the counters."""

    limit: int
    rows: Any
    first: list[tuple[int, str]] | list[tuple[int, bytes]]
    reverse_paged: bool
    complete: bool = False
    """Whether ``first`` holds every row of the query (fewer than were asked for came)."""
    returned: int = 0
    first_id: int | None = None
    last_id: int | None = None
    more: bool = False
    matched: int | None = None
    """The count of a first page that overflows, where :func:`read_page` made it."""

    @property
    def overflows(self) -> bool:
        """Whether the query may match more rows than this page shows."""
        return not self.complete or len(self.first) > self.limit

    def texts(self) -> list[bytes]:
        """The page's Feature texts as bytes, in order (read once); sets the counters.

        A list rather than one joined text: the caller joins it once with the
        collection's head and tail, so a page of megabytes is copied once.
        """
        rows: list[Any] = self.first if self.complete else [*self.first, *self.rows.fetchall()]
        if not self.reverse_paged and len(rows) > self.limit:
            rows = rows[: self.limit]
            self.more = True
        if rows:
            self.first_id, self.last_id = rows[0][0], rows[-1][0]
        self.returned = len(rows)
        if rows and isinstance(rows[0][1], str):  # open_page's rows
            return [row[1].encode() for row in rows]
        return [row[1] for row in rows]

    def close(self) -> None:
        """Close the cursor (before its connection goes back)."""
        self.rows.close()


def open_page(conn: Connection, request: ItemsRequest, *, prefetch: int = 1000) -> Page:
    """Run the page's query and take its first rows.

    Reading the first rows here makes SQL errors surface before any byte of
    the response is sent.
    """
    statement = _paged(request)
    # A page is at most MAKAZI_ITEMS_MAX_LIMIT rows, so a client-side cursor is bounded, and
    # it is planned for all its rows (a server-side cursor plans for the first 10% and then
    # walks the id index past every non-match of a rare filter).  Call start_page first.
    # (id, Feature text) tuples straight from psycopg's cursor: no Row object per feature
    rows = conn.execute(statement).cursor
    first = list(rows.fetchmany(prefetch))
    return Page(
        limit=request.limit,
        rows=rows,
        first=first,
        reverse_paged=request.before is not None,
        complete=len(first) < prefetch,
    )


def empty_bbox_hint(conn: Connection, request: ItemsRequest, *, max_km: float) -> str | None:
    """Why an empty page's bbox may have found nothing (swapped axes), or None."""
    if request.bbox_area is None:
        return None
    wkb = request.bbox_wkb
    if wkb is None:
        wkb = bytes(conn.execute(select(func.ST_AsEWKB(request.bbox_area))).scalar_one())
    return swap_hint(conn, wkb, what="bbox", max_km=max_km)


class ExplainJson(Executable, ClauseElement):
    """``EXPLAIN (FORMAT JSON)`` of a statement, compiled once and then taken from
    SQLAlchemy's statement cache like any other statement (its bind values vary)."""

    inherit_cache = True
    _traverse_internals = [("statement", InternalTraversal.dp_clauseelement)]  # noqa: RUF012

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement

    @property
    def _all_selected_columns(self) -> Any:
        # one result column, as the statement's: lets a cached compilation map its result
        return self.statement.selected_columns


@compiles(ExplainJson)
def _explain_json(element: ExplainJson, compiler: SQLCompiler, **kw: Any) -> str:
    return "EXPLAIN (FORMAT JSON) " + compiler.process(element.statement, **kw)


def count_if_cheap(conn: Connection, request: ItemsRequest) -> int | None:
    """Exact number of matches when the planner says counting is cheap, else None.

    Never a ``COUNT(*)`` over a large layer or a costly filter: the planner's
    cost estimate for the count decides (``EXACT_COUNT_MAX_COST``).
    """
    statement = base_statement(request).with_only_columns(func.count()).order_by(None)
    plan = conn.execute(ExplainJson(statement)).scalar()
    if _plan_cost(plan) > EXACT_COUNT_MAX_COST:
        return None
    return int(conn.execute(statement).scalar_one())


_PARALLEL_OFF_SQL = "SELECT set_config('max_parallel_workers_per_gather', '0', true)"
_COUNTER_SQL = (
    "SELECT counter, set_config('max_parallel_workers_per_gather', '0', true) "
    "FROM tile_changes WHERE collection = %(c)s"
)


def _page_tag(
    counter: int | None, collection: Collection, query: str, user: Principal | None
) -> str:
    viewer = f"{user.name}:{user.role}" if user is not None and collection.owned else ""
    digest = hashlib.sha256(f"{query}|{viewer}".encode()).hexdigest()[:20]
    return f'W/"{counter or 0}-{digest}"'


def start_page(conn: Connection, collection: Collection, query: str, user: Principal | None) -> str:
    """Set up the read transaction for a page and return the page's weak ETag.

    The tag is the collection's change counter (table ``tile_changes``, bumped
    by the database at every commit that edits the collection) and a digest of
    the query; traces also depend on who asks.  In the same round trip the
    transaction is told not to plan parallel workers: starting them costs more
    than reading a page takes (a dense bbox page: 10 ms with them, 1 ms without).
    """
    with _pipeline(conn) as (raw, _own):
        # with the transaction's BEGIN: one round trip
        counter = raw.execute(_COUNTER_SQL, {"c": collection.name})
    row = counter.fetchone()
    return _page_tag(row[0] if row else None, collection, query, user)


@contextmanager
def _pipeline(conn: Connection) -> Iterator[tuple[psycopg.Connection[Any], bool]]:
    """The psycopg connection under ``conn`` in pipeline mode, and whether ``conn`` was
    outside a transaction (its read transaction starts here and is ours to end).

    Statements queued in the block go to the server in one round trip, the
    transaction's ``BEGIN`` included: psycopg's own ``BEGIN`` would be a round trip
    of its own, so where nothing was sent yet the connection is handed over
    (:func:`geo.core.db.own_begin`) and the ``BEGIN`` heads the pipeline.  Read
    the results after the block.  psycopg's errors come out as SQLAlchemy's own
    execution raises them (a lost connection is invalidated, so the pool drops it).
    """
    own = not conn.in_transaction()
    if own:
        conn.begin()  # SQLAlchemy's side of the transaction; ended by the caller
        own_begin(conn)
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    # a second read on a connection handed over (a count after its page) begins alike
    begin = begin_is_ours(raw)
    try:
        with raw.pipeline():
            if begin:
                raw.execute("BEGIN", prepare=False)
            yield raw, own
    except psycopg.Error as exc:
        lost = raw.broken or raw.closed
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            None, None, exc, psycopg.Error, connection_invalidated=lost
        ) from exc


_DIALECT = PGDialect_psycopg()  # type: ignore[no-untyped-call]
_PAGE_PARAMETERS = frozenset({"viewer", "after", "before", "limit", "offset"})


@lru_cache(maxsize=256)
def _where_sql(
    collection: Collection, where: tuple[ColumnElement[bool], ...]
) -> tuple[str, dict[str, Any]] | None:
    """The request's conditions on alias ``t`` as SQL text and psycopg parameters.

    Compiled once per tuple of condition objects (the same query text gives the same
    objects, see ``_filter_condition``); the values are bound parameters, with
    expanding ``IN`` lists written out.  None where a parameter's name would meet one
    of the page's own or a value needs SQLAlchemy's processing on the way in.
    """
    _, adapter = _aliased(collection)
    condition = and_(*(adapter.traverse(c) for c in where))
    compiled = condition.compile(dialect=_DIALECT, compile_kwargs={"render_postcompile": True})
    params = compiled.params
    processed = any(
        bind.type.dialect_impl(_DIALECT).bind_processor(_DIALECT) is not None
        for bind in compiled.binds.values()
    )
    if processed or _PAGE_PARAMETERS & params.keys():
        return None
    return compiled.string, params


def _rows_sql(request: ItemsRequest, columns: str) -> tuple[str, dict[str, Any]] | None:
    """``SELECT columns FROM`` the collection as ``t`` ``WHERE`` the rows the request
    may see and match, or None when the conditions cannot be written as text."""
    collection = request.collection
    visible, viewer = collection.visible_sql("t", request.user)
    params: dict[str, Any] = dict(viewer)
    # every identifier comes from the registry, every value is a parameter
    rows = f"SELECT {columns} FROM {collection.table.name} AS t WHERE {visible}"  # noqa: S608
    if request.where:
        where = _where_sql(collection, tuple(request.where))
        if where is None:
            return None
        rows += f" AND {where[0]}"
        params.update(where[1])
    return rows, params


def page_text(request: ItemsRequest) -> tuple[str, dict[str, Any]] | None:
    """The page's SQL text and psycopg parameters, when it needs no SQLAlchemy statement.

    A page in id order (a walk through a layer by ``after``/``before``, a first
    page; filtered or not) is the same statement as :func:`open_page` runs,
    written out once per condition: building and executing it through
    SQLAlchemy cost more server CPU than the database spends on a small page.
    None for a ``sortby`` page or conditions that cannot be written as text.
    """
    if request.sortby:
        return None
    feature = feature_sql(request.collection, request.crs, skip_geometry=request.skip_geometry)
    found = _rows_sql(request, f"t.id AS id, {feature} AS feature")
    if found is None:
        return None
    rows, params = found
    if request.before is not None:
        statement = (
            f"SELECT page.id, page.feature FROM ({rows} AND t.id < %(before)s "  # noqa: S608
            "ORDER BY t.id DESC LIMIT %(limit)s) AS page ORDER BY page.id"
        )
        return statement, {**params, "before": request.before, "limit": request.limit}
    if request.after is not None:
        rows += " AND t.id > %(after)s"
        params = {**params, "after": request.after}
    statement = f"{rows} ORDER BY t.id LIMIT %(limit)s OFFSET %(offset)s"
    return statement, {**params, "limit": request.limit + 1, "offset": request.offset}


def _plan_cost(plan: Any) -> float:
    return float(plan[0]["Plan"]["Total Cost"]) if plan else float("inf")


# A page's read transaction ends with this statement in its own pipeline, not with
# psycopg's ``Connection.rollback()`` (what SQLAlchemy calls when a connection goes back to
# the pool inside a transaction): that call also deallocates every prepared statement of
# the connection, so while first pages ended that way, no page statement stayed prepared.
_END_READ = "ROLLBACK"


def read_page(
    conn: Connection, request: ItemsRequest, query: str, page_sql: tuple[str, dict[str, Any]]
) -> tuple[str, Page]:
    """The page's weak ETag (see :func:`start_page`) and its rows, in one round trip.

    The ETag counter (which also turns off parallel workers for the
    transaction) and the page statement (:func:`page_text`) go to the server
    together in a psycopg pipeline on the connection under ``conn``; the
    Feature texts come back as bytes, and the transaction ends in the same
    pipeline.  A first page also sends the plan of its count (``EXPLAIN``);
    when the page overflows and the count is cheap (see
    :func:`count_if_cheap`), the count follows in a second round trip, a read
    of its own (``Page.matched``).
    Where ``conn`` is already inside a transaction (a caller's, or a test's),
    that transaction is left to its owner.

    Raises
    ------
    sqlalchemy.exc.DBAPIError
        As SQLAlchemy's own execution would (a lost connection is invalidated).
    """
    statement, params = page_sql
    count = _rows_sql(request, "count(*)") if request.first_page else None
    with _pipeline(conn) as (raw, own):
        counter = raw.execute(_COUNTER_SQL, {"c": request.collection.name})
        # Feature texts as bytes: PostgreSQL sends a text value in binary format as its
        # UTF-8 bytes, and bytea's binary loader (psycopg's C one) hands them over as they
        # are, so a page's 0.5-5 MB of JSON is never decoded only to be encoded again
        result = raw.cursor(binary=True)
        result.adapters.register_loader("text", ByteaBinaryLoader)
        # A plain page (an id range, in id order) has one good plan for all values, so
        # psycopg may prepare it; a filter's or bbox's best plan depends on its values
        # (a generic plan could walk the id index past a rare value's few rows), and the
        # count's EXPLAIN must plan the values at hand: those are planned every time.
        prepare = None if not request.where else False
        result.execute(statement, params, prepare=prepare)
        plan = None
        if count is not None:
            plan = raw.execute("EXPLAIN (FORMAT JSON) " + count[0], count[1], prepare=False)
        if own:
            raw.execute(_END_READ, prepare=False)
    tag_row = counter.fetchone()
    rows = result.fetchall()
    tag = _page_tag(tag_row[0] if tag_row else None, request.collection, query, request.user)
    page = Page(
        limit=request.limit,
        rows=result,
        first=rows,
        reverse_paged=request.before is not None,
        complete=True,
    )
    if plan is None or count is None or not page.overflows:
        return tag, page
    explained = plan.fetchone()
    if _plan_cost(explained[0] if explained else None) > EXACT_COUNT_MAX_COST:
        return tag, page
    # READ COMMITTED: the count never shared the page's snapshot, so it may as well run
    # in a read of its own (psycopg begins it), which spares every page without a count
    # a round trip to end its transaction
    with _pipeline(conn) as (raw, _):
        if own:
            raw.execute(_PARALLEL_OFF_SQL, prepare=False)
        counted = raw.execute(*count, prepare=prepare)
        if own:
            raw.execute(_END_READ, prepare=False)
    number = counted.fetchone()
    page.matched = int(number[0]) if number else 0
    return tag, page


def fetch_feature(
    conn: Connection,
    collection: Collection,
    feature_id: int,
    *,
    user: Principal | None,
    crs: Crs = CRS84,
) -> tuple[str, int] | None:
    """One feature's GeoJSON text and version, or None when absent or not visible."""
    request = ItemsRequest(collection=collection, user=user, limit=1, crs=crs)
    statement = base_statement(request)
    alias = statement.get_final_froms()[0]
    statement = statement.add_columns(alias.c.version).where(
        alias.c.id == bindparam("fid", feature_id, type_=BigInteger)
    )
    row = conn.execute(statement).first()
    if row is None:
        return None
    return str(row[1]), int(row[2])
