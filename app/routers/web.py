"""The web map page (``/map``) and the static files it loads.

Everything the page needs is served from here: our own ``map.js`` and
``map.css``, and MapLibre GL JS (BSD-3), vendored in ``app/static/vendor`` and
shipped in the package (``make vendor`` refreshes it from the npm registry).
No file is fetched from any other host, so the map works with no internet.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, status
from fastapi.responses import FileResponse, Response

from app.preconditions import none_match
from geo.core.errors import NotFound

__all__ = ["STATIC", "router"]

router = APIRouter(tags=["Web map"])

STATIC = Path(__file__).resolve().parent.parent / "static"

# Only these names are served: a request names a file, never a path.
_FILES: dict[str, dict[str, str]] = {
    "map": {
        "map.js": "text/javascript; charset=utf-8",
        "map.css": "text/css; charset=utf-8",
    },
    "vendor": {
        "maplibre-gl.js": "text/javascript; charset=utf-8",
        "maplibre-gl.css": "text/css; charset=utf-8",
        "LICENSE.txt": "text/plain; charset=utf-8",
    },
}


def _serve(request: Request, path: Path, media_type: str) -> Response:
    """The file with a validator; 304 when the client's copy is current."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        hint = (
            " (reinstall the package, or run `make vendor`)" if path.parent.name == "vendor" else ""
        )
        raise NotFound(f"{path.name} is not installed{hint}") from None
    etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if none_match(request.headers.get("if-none-match"), etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return FileResponse(path, media_type=media_type, headers=headers)


@router.get("/map", include_in_schema=False)
def map_page(request: Request) -> Response:
    """The web map."""
    return _serve(request, STATIC / "map" / "index.html", "text/html; charset=utf-8")


@router.get("/static/{folder}/{name}", include_in_schema=False)
def static_file(request: Request, folder: str, name: str) -> Response:
    """One of the map's static files (a fixed list)."""
    media_type = _FILES.get(folder, {}).get(name)
    if media_type is None:
        raise NotFound(f"no static file {folder}/{name}")
    return _serve(request, STATIC / folder / name, media_type)
