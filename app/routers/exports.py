"""Streaming exports of a collection (planner+)."""

from __future__ import annotations

import itertools
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse

from app.deps import DbDep, PlannerUser
from app.preconditions import NO_STORE
from app.streaming import HeldRead
from geo.core.errors import NotFound
from geo.exports.stream import FORMATS, export_format, stream_export
from geo.layers.registry import COLLECTIONS, get_collection

router = APIRouter(tags=["exports"])


@router.get(
    "/exports/{collection_id}",
    summary="Download a whole collection",
    response_class=StreamingResponse,
)
def get_export(
    collection_id: Annotated[str, Path()],
    db: DbDep,
    user: PlannerUser,
    format: Annotated[str, Query(description=", ".join(FORMATS))] = "geojson",
    settlement_id: Annotated[int | None, Query(ge=1)] = None,
) -> StreamingResponse:
    """Stream the collection (optionally one settlement's part) in ``format``."""
    collection = get_collection(collection_id)
    if collection is None:
        raise NotFound(f"no collection {collection_id!r}; collections: {', '.join(COLLECTIONS)}")
    fmt = export_format(format)
    with HeldRead(db) as held:
        chunks = stream_export(held.conn, collection, fmt, user=user, settlement_id=settlement_id)
        first = next(chunks, b"")  # errors surface here, before the response starts

    suffix = f"-settlement-{settlement_id}" if settlement_id else ""
    filename = f"{collection.name}{suffix}.{fmt.extension}"
    return StreamingResponse(
        held.stream(itertools.chain([first], chunks)),
        media_type=fmt.media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            **NO_STORE,
        },
    )
