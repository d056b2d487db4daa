"""OGC API - Features: collections, items, writes (Part 4) and history."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, Header, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import Connection
from starlette.datastructures import URL

from app.bodies import JsonBody
from app.deps import DbDep, MapperUser, PublicReader, SettingsDep, ViewerUser
from app.idempotent import IdempotencyKey, idempotent_write
from app.links import href
from app.preconditions import ExpectedVersion, etag, none_match
from geo.core.auth import Principal
from geo.core.crs import CRS84, SUPPORTED, UnknownCrs, parse_crs
from geo.core.errors import BadRequest, MethodNotAllowed, NotFound
from geo.core.idempotency import request_hash
from geo.layers import collections_meta
from geo.layers.documents import (
    CollectionDocument,
    CollectionList,
    FeaturesCreated,
    History,
    Queryables,
)
from geo.layers.items import (
    count_if_cheap,
    empty_bbox_hint,
    fetch_feature,
    open_page,
    page_text,
    parse_items_request,
    read_page,
    start_page,
)
from geo.layers.registry import COLLECTIONS, Collection, get_collection
from geo.layers.writes import (
    GeometryRules,
    create_features,
    delete_feature,
    feature_history,
    parse_feature_body,
    update_feature,
)

router = APIRouter(tags=["features"])

GEOJSON = "application/geo+json"
SCHEMA_JSON = "application/schema+json"
CONFORMANCE = (
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/queryables",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/queryables-query-parameters",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/features-filter",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2",
    "http://www.opengis.net/spec/cql2/1.0/conf/advanced-comparison-operators",
    "http://www.opengis.net/spec/cql2/1.0/conf/case-insensitive-comparison",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions-plus",
    "http://www.opengis.net/spec/cql2/1.0/conf/spatial-functions",
    "http://www.opengis.net/spec/ogcapi-features-4/1.0/conf/create-replace-delete",
    "http://www.opengis.net/spec/ogcapi-features-4/1.0/conf/update",
    "http://www.opengis.net/spec/ogcapi-features-4/1.0/conf/features",
)

FeatureId = Annotated[int, Path(ge=1, le=2**62)]


async def _collection(
    collection_id: Annotated[
        str, Path(description="settlements, structures, facilities or traces")
    ],
) -> Collection:
    """The collection the path names (404 listing the collections when unknown)."""
    collection = get_collection(collection_id)
    if collection is None:
        raise NotFound(f"no collection {collection_id!r}; collections: {', '.join(COLLECTIONS)}")
    return collection


async def _writable(collection: Annotated[Collection, Depends(_collection)]) -> Collection:
    """The named collection if it takes Part 4 writes (405 naming what to do instead)."""
    if not collection.writable:
        hint = f"; {collection.write_hint}" if collection.write_hint else ""
        raise MethodNotAllowed(f"{collection.name} is read-only here{hint}", allow="GET")
    return collection


CollectionDep = Annotated[Collection, Depends(_collection)]
WritableCollection = Annotated[Collection, Depends(_writable)]


def _cache_headers(user: Principal | None) -> dict[str, str]:
    scope = "private" if user is not None else "public"
    return {"Cache-Control": f"{scope}, max-age=0, must-revalidate", "Vary": "Authorization"}


# ------------------------------------------------------------------ collections
@router.get(
    "/collections",
    summary="The published collections",
    responses={200: {"model": CollectionList, "description": "Every collection"}},
)
def list_collections(request: Request, db: DbDep, user: PublicReader) -> JSONResponse:
    """Every collection with its extent, CRS list and links."""
    with db.read() as conn:
        extents = collections_meta.extents(conn, request.app.state.extent_cache)
    body = {
        "collections": [
            collections_meta.describe(c, extents.get(c.name), base=href(request, ""))
            for c in COLLECTIONS.values()
        ],
        "crs": [crs.uri for crs in SUPPORTED],
        "links": [
            {
                "href": href(request, "/collections"),
                "rel": "self",
                "type": "application/json",
                "title": "Collections",
            },
        ],
    }
    return JSONResponse(body, headers=_cache_headers(user))


@router.get(
    "/collections/{collection_id}",
    summary="One collection",
    responses={200: {"model": CollectionDocument, "description": "The collection"}},
)
def get_collection_doc(
    collection: CollectionDep, request: Request, db: DbDep, user: PublicReader
) -> JSONResponse:
    """Extent, CRS list, item type and links of one collection."""
    with db.read() as conn:
        extents = collections_meta.extents(conn, request.app.state.extent_cache)
    body = collections_meta.describe(
        collection, extents.get(collection.name), base=href(request, "")
    )
    queryables_href = href(request, f"/collections/{collection.name}/queryables")
    link = (
        f'<{queryables_href}>; rel="http://www.opengis.net/def/rel/ogc/1.0/queryables"; '
        'type="application/schema+json"'
    )
    return JSONResponse(body, headers={**_cache_headers(user), "Link": link})


class SchemaJSONResponse(JSONResponse):
    """JSON sent as ``application/schema+json`` (a JSON Schema document)."""

    media_type = SCHEMA_JSON


@router.get(
    "/collections/{collection_id}/queryables",
    summary="Queryable properties",
    response_class=SchemaJSONResponse,
    responses={200: {"model": Queryables, "description": "A JSON Schema of the queryables"}},
)
def get_queryables(collection: CollectionDep, request: Request, user: PublicReader) -> Response:
    """JSON Schema of the properties usable in ``filter``, ``sortby`` and as parameters."""
    schema = collections_meta.queryables(
        collection, href(request, f"/collections/{collection.name}/queryables")
    )
    return SchemaJSONResponse(schema, headers=_cache_headers(user))


# ------------------------------------------------------------------------ items
def _link(url: URL, rel: str, title: str, **params: int | None) -> dict[str, str]:
    """A link to this items URL with the paging parameters replaced."""
    query = [
        (k, v)
        for k, v in parse_qsl(url.query, keep_blank_values=True)
        if k not in ("after", "before", "offset")
    ]
    query += [(k, str(v)) for k, v in params.items() if v is not None]
    return {
        "href": str(url.replace(query=urlencode(query))),
        "rel": rel,
        "type": GEOJSON,
        "title": title,
    }


class ItemsQuery(BaseModel):
    """The items query parameters, validated in one call (fields in the order of the 400s).

    ``parse_items_request`` reads the query string itself; this model only
    refuses a malformed value up front with the problem FastAPI's declared
    parameters used to produce (``query.limit: Input should be ...``), at a
    thirtieth of their cost.
    """

    limit: int | None = Field(
        None, ge=1, description="Features per page; a larger value is clamped"
    )
    bbox: str | None = Field(None, description="minx,miny,maxx,maxy in bbox-crs")
    bbox_crs: str | None = Field(None, alias="bbox-crs")
    crs: str | None = Field(None, description="CRS of the response")
    datetime_: str | None = Field(None, alias="datetime")
    filter_: str | None = Field(None, alias="filter", description="CQL2 filter")
    filter_lang: Literal["cql2-text", "cql2-json"] | None = Field(None, alias="filter-lang")
    filter_crs: str | None = Field(None, alias="filter-crs")
    sortby: str | None = Field(None, description="e.g. -storeys,structure_number")
    after: int | None = Field(None, description="keyset cursor: ids after this")
    before: int | None = Field(None, description="keyset cursor: ids before this")
    offset: int | None = Field(None, ge=0)


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """OpenAPI query parameters documenting ``model``'s fields (by alias)."""
    properties = model.model_json_schema()["properties"]
    out = []
    for name, field in model.model_fields.items():
        schema = dict(properties[field.alias or name])
        schema.pop("default", None)
        parameter: dict[str, Any] = {"name": field.alias or name, "in": "query", "required": False}
        if field.description:
            parameter["description"] = schema.pop("description")
        out.append({**parameter, "schema": schema})
    return out


async def _items_query(request: Request) -> None:
    """Refuse a malformed items query parameter (the last value of each counts, as before)."""
    try:
        ItemsQuery.model_validate(dict(request.query_params))
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError([{**e, "loc": ("query", *e["loc"])} for e in errors]) from None


@router.get(
    "/collections/{collection_id}/items",
    summary="Features of a collection (GeoJSON, paged)",
    openapi_extra={"parameters": _query_parameters(ItemsQuery)},
    response_class=StreamingResponse,
    responses={200: {"content": {GEOJSON: {}}}},
)
def get_items(
    collection: CollectionDep,
    request: Request,
    db: DbDep,
    settings: SettingsDep,
    user: PublicReader,
    _query: Annotated[None, Depends(_items_query)],
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """A page of features; follow the ``next`` link for more."""
    parsed = parse_items_request(
        collection,
        request.query_params.multi_items(),
        user=user,
        default_limit=settings.items_default_limit,
        max_limit=settings.items_max_limit,
    )
    url = request.url

    def body() -> bytes:
        try:
            texts = page.texts()
            links = [
                _link(
                    url,
                    "self",
                    "This page",
                    after=parsed.after,
                    before=parsed.before,
                    offset=parsed.offset or None,
                ),
                {
                    "href": href(request, f"/collections/{collection.name}"),
                    "rel": "collection",
                    "type": "application/json",
                    "title": collection.title,
                },
            ]
            if parsed.sortby:
                if page.more:
                    links.append(
                        _link(url, "next", "Next page", offset=parsed.offset + parsed.limit)
                    )
                if parsed.offset:
                    links.append(
                        _link(
                            url,
                            "prev",
                            "Previous page",
                            offset=max(0, parsed.offset - parsed.limit),
                        )
                    )
            else:
                has_next = page.more or (parsed.before is not None and page.last_id is not None)
                if has_next and page.last_id is not None:
                    links.append(_link(url, "next", "Next page", after=page.last_id))
                has_prev = (
                    not parsed.first_page
                    and page.first_id is not None
                    and (parsed.before is None or page.returned == parsed.limit)
                )
                if has_prev:
                    links.append(_link(url, "prev", "Previous page", before=page.first_id))
            tail: dict[str, Any] = {"numberReturned": page.returned}
            number_matched = matched
            if number_matched is None and parsed.first_page and not page.more:
                number_matched = page.returned
            if number_matched is not None:
                tail["numberMatched"] = number_matched
            tail["timeStamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            tail["links"] = links
            if hint is not None:
                tail["hint"] = hint
            head = b'{"type":"FeatureCollection","features":['
            end = b"]," + json.dumps(tail)[1:].encode()
            if not texts:
                return head + end
            # one copy of the page's megabytes: the head and tail ride on the first and last
            texts[0] = head + texts[0]
            texts[-1] += end
            return b",".join(texts)
        finally:
            page.close()

    # A page is bounded (MAKAZI_ITEMS_MAX_LIMIT rows) and read with a client-side cursor,
    # so its rows are in memory once the query returns: the body is assembled here, in this
    # worker thread, and sent as one response (no thread hop per streamed chunk).
    # Without If-None-Match the ETag's counter and a plain page (no filter, id order) are
    # read in one round trip; a revalidation reads the counter first, so a match costs no page.
    page_sql = page_text(parsed) if if_none_match is None else None
    with db.read() as conn:
        if page_sql is not None:
            tag, page = read_page(conn, parsed, str(request.url.query), page_sql)
        else:
            tag = start_page(conn, collection, str(request.url.query), user)
            if none_match(if_none_match, tag):
                not_modified = {"ETag": tag, **_cache_headers(user)}
                return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=not_modified)
            page = open_page(conn, parsed)
        # a first page holding every match counts them itself; only a longer one needs a count
        # (read_page made it already where it read the page)
        matched = page.matched
        if page_sql is None and parsed.first_page and page.overflows:
            matched = count_if_cheap(conn, parsed)
        hint = None
        if not page.first and parsed.first_page:
            hint = empty_bbox_hint(conn, parsed, max_km=settings.max_km_from_settlements)
        content = body()

    self_link = str(url).replace(",", "%2C")
    headers = {
        "Content-Crs": f"<{parsed.crs.uri}>",
        "ETag": tag,
        "Link": (
            f'<{self_link}>; rel="self"; type="{GEOJSON}", '
            f"<{href(request, f'/collections/{collection.name}/queryables')}>; "
            'rel="http://www.opengis.net/def/rel/ogc/1.0/queryables"; '
            'type="application/schema+json"'
        ),
        **_cache_headers(user),
    }
    return Response(content, media_type=GEOJSON, headers=headers)


def _response_crs(value: str | None) -> Any:
    try:
        return parse_crs(value)
    except UnknownCrs as exc:
        raise BadRequest(f"crs: {exc}") from exc


def _feature_response(
    request: Request,
    collection: Collection,
    fid: int,
    text_value: str,
    version: int,
    crs_uri: str,
    *,
    status_code: int = status.HTTP_200_OK,
    extra_headers: dict[str, str] | None = None,
) -> Response:
    self_href = href(request, f"/collections/{collection.name}/items/")
    links = [
        {"href": f"{self_href}{fid}", "rel": "self", "type": GEOJSON},
        {
            "href": href(request, f"/collections/{collection.name}"),
            "rel": "collection",
            "type": "application/json",
        },
        {"href": f"{self_href}{fid}/history", "rel": "version-history", "type": "application/json"},
    ]
    body = text_value[:-1] + ',"links":' + json.dumps(links) + "}"
    headers = {"ETag": etag(version), "Content-Crs": f"<{crs_uri}>", **(extra_headers or {})}
    return Response(body, status_code=status_code, media_type=GEOJSON, headers=headers)


@router.get(
    "/collections/{collection_id}/items/{feature_id}",
    summary="One feature",
    responses={200: {"content": {GEOJSON: {}}}},
)
def get_item(
    collection: CollectionDep,
    feature_id: FeatureId,
    request: Request,
    db: DbDep,
    user: PublicReader,
    crs: Annotated[str | None, Query()] = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The feature with its version as ``ETag``."""
    target = _response_crs(crs)
    with db.read() as conn:
        found = fetch_feature(conn, collection, feature_id, user=user, crs=target)
    if found is None:
        raise NotFound(f"{collection.name} {feature_id} does not exist")
    text_value, version = found
    if none_match(if_none_match, etag(version)):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag(version)})
    return _feature_response(
        request,
        collection,
        feature_id,
        text_value,
        version,
        target.uri,
        extra_headers=_cache_headers(user),
    )


def _geometry_rules(
    settings: SettingsDep,
    content_crs: Annotated[
        str | None, Header(description="the CRS of the body's coordinates (default CRS84)")
    ] = None,
    repair: Annotated[bool, Query(description="repair invalid geometry")] = False,
    force: Annotated[
        bool,
        Query(
            description="store geometry even when it lies farther than "
            "MAKAZI_MAX_KM_FROM_SETTLEMENTS from every settlement"
        ),
    ] = False,
) -> GeometryRules:
    """How the body's geometry is read: its CRS, repair, the vertex limit, the distance check."""
    crs = CRS84
    if content_crs is not None:
        try:
            crs = parse_crs(content_crs.strip().strip("<>"))
        except UnknownCrs as exc:
            raise BadRequest(f"Content-Crs: {exc}") from exc
    return GeometryRules(
        crs=crs,
        repair=repair,
        max_vertices=settings.max_feature_vertices,
        max_km_from_settlements=0.0 if force else settings.max_km_from_settlements,
    )


GeometryRulesDep = Annotated[GeometryRules, Depends(_geometry_rules)]


@router.post(
    "/collections/{collection_id}/items",
    status_code=status.HTTP_201_CREATED,
    summary="Create features (a Feature or a FeatureCollection)",
    responses={
        201: {
            "model": FeaturesCreated,
            "description": "One feature: the created Feature (GeoJSON); several: what was created",
            "content": {GEOJSON: {}},
        }
    },
)
async def post_items(
    user: MapperUser,
    collection: WritableCollection,
    idempotency_key: IdempotencyKey,
    body: JsonBody,
    request: Request,
    db: DbDep,
    rules: GeometryRulesDep,
) -> Response:
    """Create one feature (201 + Location + ETag) or many (all or nothing)."""

    def create(conn: Connection) -> Response:
        features = parse_feature_body(body, allow_collection=True)
        created = create_features(conn, collection, features, rules)
        base = href(request, f"/collections/{collection.name}/items/")
        if len(created) == 1 and len(features) == 1:
            fid, version = created[0]
            found = fetch_feature(conn, collection, fid, user=user)
            assert found is not None
            return _feature_response(
                request,
                collection,
                fid,
                found[0],
                version,
                CRS84.uri,
                status_code=status.HTTP_201_CREATED,
                extra_headers={"Location": f"{base}{fid}"},
            )
        summary = {
            "numberCreated": len(created),
            "created": [{"id": fid, "version": v, "href": f"{base}{fid}"} for fid, v in created],
        }
        return JSONResponse(
            summary,
            status_code=status.HTTP_201_CREATED,
            headers={"Location": f"{base}{created[0][0]}"},
        )

    return await idempotent_write(
        db,
        actor=user.name,
        key=idempotency_key,
        scope=f"POST /collections/{collection.name}/items",
        fingerprint=request_hash(body, str(request.query_params), rules.crs.uri),
        write=create,
    )


# One function, two routes: each method is its own operation (and operation id) in /api.
@router.patch(
    "/collections/{collection_id}/items/{feature_id}",
    summary="Merge-patch a feature (JSON merge patch: null clears)",
    responses={200: {"content": {GEOJSON: {}}, "description": "The feature as patched"}},
)
@router.put(
    "/collections/{collection_id}/items/{feature_id}",
    summary="Replace a feature",
    responses={200: {"content": {GEOJSON: {}}, "description": "The feature as replaced"}},
)
async def write_item(
    user: MapperUser,
    collection: WritableCollection,
    expected: ExpectedVersion,
    idempotency_key: IdempotencyKey,
    body: JsonBody,
    feature_id: FeatureId,
    request: Request,
    db: DbDep,
    rules: GeometryRulesDep,
) -> Response:
    """PUT replaces properties and geometry; PATCH is a JSON merge patch (null clears).

    Both need ``If-Match`` with the version read (428 without, 412 when stale).  With an
    ``Idempotency-Key`` a retried edit whose first answer was lost gets that answer again
    rather than a 412 from its own change (the field app's sync relies on it).
    """

    def work(conn: Connection) -> Response:
        feature = parse_feature_body(body, allow_collection=False)[0]
        version = update_feature(
            conn,
            collection,
            feature_id,
            feature,
            merge=request.method == "PATCH",
            expected_version=expected,
            rules=rules,
        )
        found = fetch_feature(conn, collection, feature_id, user=user)
        assert found is not None
        return _feature_response(request, collection, feature_id, found[0], version, CRS84.uri)

    return await idempotent_write(
        db,
        actor=user.name,
        key=idempotency_key,
        scope=f"{request.method} /collections/{collection.name}/items/{feature_id}",
        fingerprint=request_hash(body, str(request.query_params), rules.crs.uri, str(expected)),
        write=work,
    )


# OPTIONS answers which methods a resource takes (Allow): QGIS 3.32 and later ask it before
# offering to add, change or delete features of an OGC API - Features layer.
@router.options("/collections/{collection_id}/items", include_in_schema=False)
def options_items(collection: CollectionDep) -> Response:
    """The methods ``/items`` takes: reads, and POST where the collection is writable."""
    methods = "GET, POST, OPTIONS" if collection.writable else "GET, OPTIONS"
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers={"Allow": methods})


@router.options("/collections/{collection_id}/items/{feature_id}", include_in_schema=False)
def options_item(collection: CollectionDep, feature_id: str) -> Response:
    """The methods one feature takes (PUT, PATCH and DELETE need ``If-Match``)."""
    methods = "GET, PUT, PATCH, DELETE, OPTIONS" if collection.writable else "GET, OPTIONS"
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers={"Allow": methods})


@router.delete(
    "/collections/{collection_id}/items/{feature_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a feature (soft)",
)
def delete_item(
    user: MapperUser,
    collection: WritableCollection,
    expected: ExpectedVersion,
    feature_id: FeatureId,
    db: DbDep,
) -> Response:
    """Soft delete: the row stays with ``deleted_at`` and the deletion shows in history."""
    with db.begin(actor=user.name) as conn:
        delete_feature(conn, collection, feature_id, expected_version=expected)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/collections/{collection_id}/items/{feature_id}/history",
    summary="Every version of a feature",
    responses={200: {"model": History, "description": "Every version, oldest first"}},
)
def get_history(
    user: ViewerUser, collection: CollectionDep, feature_id: FeatureId, db: DbDep
) -> JSONResponse:
    """``{"versions": [{version, changed_at, changed_by, action, changes}]}``."""
    with db.read() as conn:
        if collection.owned and fetch_feature(conn, collection, feature_id, user=user) is None:
            raise NotFound(f"{collection.name} {feature_id} does not exist")
        versions = feature_history(conn, collection, feature_id)
    return JSONResponse({"versions": versions})
