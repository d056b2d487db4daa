"""Streaming exports of a collection (planner+).

Formats PostgreSQL builds stream from the request's connection, each chunk read
in the thread pool; from a read replica that fails midway they carry on from the
primary after the last row sent (:mod:`geo.exports.resume`).  GeoPackage and
Shapefile are written by GDAL in a worker process (at most ``MAKAZI_EXPORT_WORKERS``
at once, else 503 with Retry-After) while this handler waits without blocking the
event loop; the file is then streamed.  However the response ends (sent, client
gone, server stopping) the connection goes back to the pool and the worker and its
files are removed.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.deps import DbDep, PlannerUser, SettingsDep
from app.head import is_head
from app.preconditions import NO_STORE
from app.read_routing import long_stream
from app.streaming import ClosingStreamingResponse, HeldRead
from geo.analysis.common import require_settlement
from geo.core.db import Database, set_statement_timeout
from geo.core.errors import NotFound
from geo.exports.query import ExportRows
from geo.exports.resume import resumable
from geo.exports.stream import (
    FORMATS,
    ExportFormat,
    export_format,
    file_chunks,
    needs_worker,
)
from geo.exports.worker import ExportJob, ExportTask, export_workers
from geo.layers.registry import COLLECTIONS, get_collection

router = APIRouter(tags=["exports"])

WORKER_POLL_S = 0.1


def _sent_then_closed(
    chunks: Iterator[bytes], first: bytes, *closers: Callable[[], None]
) -> Iterator[bytes]:
    """``first`` and the rest of ``chunks``, then ``closers``, however the body ends.

    Sent by :class:`ClosingStreamingResponse`, which closes this generator (and so
    runs the closers) the moment the response ends, also when the client hangs up.
    """
    try:
        if first:
            yield first
        yield from chunks
    finally:
        _close_all(chunks, closers)


def _close_all(chunks: Iterator[bytes], closers: tuple[Callable[[], None], ...]) -> None:
    try:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    finally:
        for closer in closers:
            closer()


def _start_streaming(
    db: Database, rows: ExportRows, fmt: ExportFormat, timeout_ms: int
) -> tuple[Generator[bytes, None, None], bytes, HeldRead] | None:
    """Open the read and the first chunk (errors surface here), or None if GDAL must write it."""
    with HeldRead(db) as held:
        set_statement_timeout(held.conn, timeout_ms)
        if needs_worker(held.conn, rows, fmt):
            held.close()
            return None
        assert fmt.built_by_postgis is not None
        chunks = resumable(db, held.conn, rows, fmt.built_by_postgis, timeout_ms=timeout_ms)
        try:
            first = next(chunks, b"")
        except BaseException:
            chunks.close()
            raise
    return chunks, first, held


async def _worker_file(job: ExportJob, request: Request) -> bool:
    """Wait for the worker; False when the client went away first."""
    while not job.finished:
        if await request.is_disconnected():
            return False
        await anyio.sleep(WORKER_POLL_S)
    return True


@router.get(
    "/exports/{collection_id}",
    summary="Download a whole collection",
    response_class=StreamingResponse,
    responses={503: {"description": "All export workers are busy; see Retry-After"}},
)
async def get_export(
    request: Request,
    collection_id: Annotated[str, Path()],
    db: DbDep,
    settings: SettingsDep,
    user: PlannerUser,
    format: Annotated[str, Query(description=", ".join(FORMATS))] = "geojson",
    settlement_id: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    """Stream the collection (optionally one settlement's part) in ``format``."""
    collection = get_collection(collection_id)
    if collection is None:
        raise NotFound(f"no collection {collection_id!r}; collections: {', '.join(COLLECTIONS)}")
    fmt = export_format(format)
    if settlement_id is not None:
        await run_in_threadpool(require_settlement, db, settlement_id)
    suffix = f"-settlement-{settlement_id}" if settlement_id else ""
    headers = {
        "Content-Disposition": f'attachment; filename="{collection.name}{suffix}.{fmt.extension}"',
        **NO_STORE,
    }
    if is_head(request):
        # the headers a GET would send, without reading the layer or taking a worker
        answer = Response(media_type=fmt.media_type, headers=headers)
        del answer.headers["content-length"]  # a GET streams: its length is not known
        return answer
    timeout_ms = settings.export_timeout_ms
    long_stream()  # sent as it is produced; a lost replica is resumed from (geo.exports.resume)
    rows = ExportRows(collection, user, settlement_id, batch=settings.export_batch_rows)
    started = await run_in_threadpool(_start_streaming, db, rows, fmt, timeout_ms)
    if started is not None:
        chunks, first, held = started
        body = _sent_then_closed(chunks, first, held.close)
        return ClosingStreamingResponse(body, media_type=fmt.media_type, headers=headers)

    engine = db.read_engine()
    task = ExportTask(
        database_url=engine.url.render_as_string(hide_password=False),
        collection=collection.name,
        format=fmt.name,
        user=user,
        settlement_id=settlement_id,
        timeout_ms=timeout_ms,
        batch=rows.batch,
    )
    # in the thread pool: the first start also starts the fork server (seconds of imports)
    job = await run_in_threadpool(export_workers(settings.export_workers).start, task)
    try:
        if not await _worker_file(job, request):
            job.close()
            return Response(status_code=499)  # "client closed request": nobody reads it
        path = job.result()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(job.close)
        raise
    body = _sent_then_closed(file_chunks(path), b"", job.close)
    return ClosingStreamingResponse(body, media_type=fmt.media_type, headers=headers)
