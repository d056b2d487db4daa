"""``/imports``: bulk import of vector files (HTTP only; the work is in :mod:`geo.imports`).

``POST /imports`` takes ``multipart/form-data`` with the file in ``file`` and
the options as form fields (or query parameters): ``collection``,
``settlement_id``, ``mapping`` (JSON), ``partial``, ``dry_run``, ``layer``,
``source_crs``, ``async``.  The file streams into a bounded spool (413 as soon
as it passes ``MAKAZI_MAX_UPLOAD_MB``).  Small files are imported at once (201
with the report); larger ones (``MAKAZI_IMPORT_ASYNC_MB``) or ``async=true`` are
queued: 202 with ``Location: /imports/{id}``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Connection

from app.deps import CurrentUser, DbDep, MapperUser, SettingsDep
from app.idempotent import IdempotencyKey, idempotent_write
from app.links import href
from app.preconditions import NO_STORE
from geo.core.errors import BadRequest, Forbidden, Unauthorised, UnsupportedMediaType
from geo.core.idempotency import request_hash
from geo.core.uploads import BodySpool, MultipartFile, SpooledBody, TooLarge
from geo.imports.jobs import create_import, import_now, import_status, store_file
from geo.imports.mapping import Mapping
from geo.imports.pipeline import ImportOptions, collection_for, limits_from

router = APIRouter(tags=["imports"])

MULTIPART_SLACK = 1024 * 1024  # the small form fields and boundaries around the file
FORM_FIELDS = (
    "collection",
    "settlement_id",
    "mapping",
    "partial",
    "dry_run",
    "layer",
    "source_crs",
    "async",
)
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


class _Form(MultipartFile):
    """The ``file`` field to a spool, and the small option fields kept as text."""

    def __init__(self, content_type: str, *, spool: BodySpool, body_limit: int) -> None:
        super().__init__(content_type, field="file", spool=spool, body_limit=body_limit)
        self.fields: dict[str, str] = {}
        self._current: str | None = None
        self._buffer = bytearray()

    def _headers_finished(self) -> None:
        self._flush()
        super()._headers_finished()
        if not self._in_field:
            from python_multipart.multipart import parse_options_header

            _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
            name = params.get(b"name", b"").decode("utf-8", "replace")
            self._current = name if name in FORM_FIELDS else None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_field:
            super()._part_data(data, start, end)
        elif self._current is not None:
            self._buffer += data[start:end]
            if len(self._buffer) > MULTIPART_SLACK:
                raise TooLarge(MULTIPART_SLACK)

    def _flush(self) -> None:
        if self._current is not None:
            self.fields[self._current] = self._buffer.decode("utf-8", "replace")
        self._current = None
        self._buffer = bytearray()

    def finish(self) -> SpooledBody:
        body = super().finish()
        self._flush()
        return body


def _flag(name: str, value: str | None) -> bool:
    if value is None:
        return False
    folded = value.strip().casefold()
    if folded in _TRUE:
        return True
    if folded in _FALSE:
        return False
    raise BadRequest(f"{name} must be true or false; got {value!r}", field=name)


def _options(fields: dict[str, str]) -> ImportOptions:
    collection = fields.get("collection")
    if not collection:
        raise BadRequest(
            "collection is required: settlements, structures or facilities", field="collection"
        )
    collection_for(collection)
    settlement = fields.get("settlement_id") or None
    if settlement is not None and not settlement.strip().isdigit():
        raise BadRequest(
            f"settlement_id must be a whole number; got {settlement!r}", field="settlement_id"
        )
    mapping = fields.get("mapping") or None
    Mapping.parse(mapping)  # refuse a bad mapping before anything is read
    return ImportOptions(
        collection=collection,
        settlement_id=int(settlement) if settlement is not None else None,
        mapping=mapping,
        partial=_flag("partial", fields.get("partial")),
        dry_run=_flag("dry_run", fields.get("dry_run")),
        source_crs=fields.get("source_crs") or None,
        layer=fields.get("layer") or None,
    )


async def _receive(
    request: Request, settings: SettingsDep
) -> tuple[SpooledBody, dict[str, str], str | None]:
    limit = settings.max_upload_bytes
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "multipart/form-data":
        raise UnsupportedMediaType(
            "send the file as the field 'file' of multipart/form-data, with the options "
            "(collection, mapping, ...) as form fields or query parameters"
        )
    declared = request.headers.get("content-length")
    body_limit = limit + MULTIPART_SLACK
    if declared and declared.isdigit() and int(declared) > body_limit:
        raise TooLarge(limit)
    form = _Form(content_type, spool=BodySpool(limit=limit), body_limit=body_limit)
    async for chunk in request.stream():
        form.feed(chunk)
    body = form.finish()
    fields = {k: v for k, v in request.query_params.items() if k in FORM_FIELDS}
    fields.update(form.fields)
    return body, fields, form.filename


_FORM_SCHEMA = {
    "type": "object",
    "required": ["file", "collection"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "the file to import"},
        "collection": {"type": "string", "enum": ["settlements", "structures", "facilities"]},
        "settlement_id": {"type": "integer", "description": "put every feature in it"},
        "mapping": {"type": "string", "description": "JSON: fields, values, defaults..."},
        "partial": {"type": "boolean", "description": "import the valid features"},
        "dry_run": {"type": "boolean", "description": "check and report; write nothing"},
        "layer": {"type": "string", "description": "the layer of a multi-layer file"},
        "source_crs": {"type": "string", "description": "e.g. EPSG:21037"},
        "async": {"type": "boolean", "description": "queue it (202) whatever its size"},
    },
}

Upload = Annotated[tuple[SpooledBody, dict[str, str], str | None], Depends(_receive)]


@router.post(
    "/imports",
    status_code=status.HTTP_201_CREATED,
    summary="Import a vector file: GeoJSON, GeoPackage, zipped Shapefile, KML/KMZ, FlatGeobuf, CSV",
    responses={
        200: {"description": "dry run: the report, the mapping and counts; nothing written"},
        201: {"description": "imported: the report (imported, updated, unchanged, rejected...)"},
        202: {"description": "queued: poll Location (GET /imports/{id})"},
        400: {"description": "unreadable, hostile or ambiguous file (e.g. several layers)"},
        413: {"description": "over MAKAZI_MAX_UPLOAD_MB or a decompression limit"},
        422: {"description": "bad features (all or nothing): problem+json with the report"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": _FORM_SCHEMA}},
        }
    },
)
async def post_import(
    request: Request,
    user: MapperUser,
    idempotency_key: IdempotencyKey,
    upload: Upload,
    db: DbDep,
    settings: SettingsDep,
) -> Response:
    """Import or queue the file; see the module docstring for the fields."""
    body, fields, filename = upload
    try:
        options = _options(fields)
        if Mapping.parse(options.mapping).households is not None and not user.at_least(
            "enumerator"
        ):
            raise Forbidden(
                "importing households (mapping.households) needs role enumerator or higher; "
                f"your token has {user.role}"
            )
        queued = _flag("async", fields.get("async")) or (
            body.size > settings.import_async_mb * 1024 * 1024
        )
        if options.dry_run:
            queued = False
        limits = limits_from(settings)

        def write(conn: Connection) -> Response:
            if queued:
                import_id = create_import(
                    conn,
                    owner=user.name,
                    options=options,
                    body=body,
                    filename=filename,
                    status="queued",
                )
                store_file(conn, import_id, body)
                location = href(request, f"/imports/{import_id}")
                document: dict[str, Any] = {
                    "id": import_id,
                    "status": "queued",
                    "progress": 0.0,
                    "report": None,
                }
                return JSONResponse(
                    document, status_code=status.HTTP_202_ACCEPTED, headers={"Location": location}
                )
            report, done_id = import_now(
                conn, owner=user.name, options=options, body=body, filename=filename, limits=limits
            )
            document = report.as_dict()
            if done_id is None:
                return JSONResponse(document, headers=NO_STORE)
            import_id = done_id
            location = href(request, f"/imports/{import_id}")
            return JSONResponse(
                {"id": import_id, **document},
                status_code=status.HTTP_201_CREATED,
                headers={"Location": location},
            )

        return await idempotent_write(
            db,
            actor=user.name,
            key=idempotency_key,
            scope="POST /imports",
            fingerprint=request_hash(body.sha256, repr(sorted(fields.items()))),
            write=write,
        )
    finally:
        body.close()


@router.get("/imports/{import_id}", summary="An import's status, progress and report")
async def get_import(import_id: int, user: CurrentUser, db: DbDep) -> Response:
    """``{id, status, progress, report}``: the importer or an admin (404/403 otherwise)."""
    if user is None:
        raise Unauthorised("reading an import needs a bearer token")

    def read() -> dict[str, Any]:
        with db.read() as conn:
            return import_status(conn, import_id, user)

    return JSONResponse(await run_in_threadpool(read), headers=NO_STORE)
