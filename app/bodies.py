"""Request bodies read with a size limit enforced while the bytes arrive.

Every route that reads a JSON body takes :data:`JsonBody`: the limit is the
``MAKAZI_MAX_JSON_BODY_MB`` setting, and a body past it is a 413 as soon as
the bytes show it, never read whole into memory first.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.deps import SettingsDep
from geo.core.errors import TooLarge

__all__ = ["JsonBody", "read_limited"]


async def read_limited(request: Request, limit: int, *, setting: str) -> bytes:
    """The whole body, or a 413 as soon as it grows past ``limit`` bytes.

    Parameters
    ----------
    limit
        Largest accepted body in bytes.
    setting
        The ``MAKAZI_*`` setting that controls the limit, named in the error.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the body is {int(declared)} bytes; the limit is {limit} ({setting})")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body is larger than the limit of {limit} bytes ({setting})")
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request, settings: SettingsDep) -> bytes:
    """The raw JSON body, at most ``MAKAZI_MAX_JSON_BODY_MB``."""
    limit = settings.max_json_body_mb * 1024 * 1024
    return await read_limited(request, limit, setting="MAKAZI_MAX_JSON_BODY_MB")


JsonBody = Annotated[bytes, Depends(json_body)]
"""A JSON request body's bytes, read within the configured limit."""
