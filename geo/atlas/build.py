"""One call from a settlement id to its atlas PDF: read, profile, draw."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import IO

from geo.atlas.data import load_atlas_data
from geo.atlas.pdf import AtlasRequest, write_atlas
from geo.core.db import Database
from geo.core.errors import NotFound
from geo.core.settings import Settings
from geo.profiles.profile import get_profile

__all__ = ["build_atlas"]


def build_atlas(
    db: Database,
    out: IO[bytes],
    *,
    settlement_id: int,
    settings: Settings,
    request: AtlasRequest,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write the atlas of ``settlement_id`` to ``out``; the number of pages.

    The profile on the cover is the one ``GET /settlements/{id}/profile`` gives
    the same role with the same ``verified`` and ``as_of``.
    """
    timeout_ms = int(settings.atlas_timeout_s * 1000)
    with db.read() as conn:
        data = load_atlas_data(
            conn,
            settlement_id=settlement_id,
            as_of=request.as_of,
            max_structures=settings.atlas_max_structures,
            timeout_ms=timeout_ms,
        )
        before = None
        if request.since is not None:
            try:
                before = load_atlas_data(
                    conn,
                    settlement_id=settlement_id,
                    as_of=request.since,
                    max_structures=settings.atlas_max_structures,
                    timeout_ms=timeout_ms,
                )
            except NotFound:  # not mapped yet then: everything is new
                before = replace(data, structures=[], facilities=[])
    profile = get_profile(
        db,
        settlement_id=settlement_id,
        settings=settings,
        role=request.role,
        verified=request.verified,
        as_of=request.as_of,
    )
    return write_atlas(
        out,
        data=data,
        profile=profile,
        request=request,
        timeout_s=settings.atlas_timeout_s,
        before=before,
        progress=progress,
    )
