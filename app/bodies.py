"""Reading request bodies with a size limit enforced while the bytes arrive."""

from __future__ import annotations

from fastapi import Request

from geo.errors import TooLarge

__all__ = ["read_limited"]


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
