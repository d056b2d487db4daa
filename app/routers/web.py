"""The web pages (the map at ``/map``, the API docs at ``/docs``) and the static files they load.

Everything the pages need is served from here: the map's own ``map.js`` and
``map.css``, MapLibre GL JS (BSD-3) vendored in ``app/static/vendor``, and
Swagger UI (``swagger-ui-dist``, Apache-2.0) vendored in
``app/static/vendor/swagger-ui``, both shipped in the package (``make vendor``
refreshes them from the npm registry).  No file is fetched from any other host,
so both pages work with no internet.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, Request, status
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response

from app.headers import content_security_policy, script_hash
from app.preconditions import none_match
from app.read_routing import long_stream
from geo.core.errors import NotFound

__all__ = ["STATIC", "SWAGGER_UI", "router"]

router = APIRouter(tags=["Web map"])

STATIC = Path(__file__).resolve().parent.parent / "static"
SWAGGER_UI = "vendor/swagger-ui"  # under STATIC, and under /static/ in URLs
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)

# Only these names are served, by folder (relative to STATIC): a request names a
# listed file, never a path.
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
    "vendor/pmtiles": {
        "pmtiles.js": "text/javascript; charset=utf-8",
        "LICENSE.txt": "text/plain; charset=utf-8",
        "fflate-LICENSE": "text/plain; charset=utf-8",
    },
    SWAGGER_UI: {
        "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
        "swagger-ui.css": "text/css; charset=utf-8",
        "favicon-32x32.png": "image/png",
        "LICENSE": "text/plain; charset=utf-8",
        "NOTICE": "text/plain; charset=utf-8",
        "swagger-ui-bundle.js.LICENSE.txt": "text/plain; charset=utf-8",
    },
}


def _serve(request: Request, path: Path, media_type: str) -> Response:
    """The file with a validator; 304 when the client's copy is current."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        vendored = "vendor" in path.relative_to(STATIC).parts
        hint = " (reinstall the package, or run `make vendor`)" if vendored else ""
        raise NotFound(f"{path.name} is not installed{hint}") from None
    etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if none_match(request.headers.get("if-none-match"), etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    long_stream()  # a file of the package: nothing to retry, so not held in memory
    return FileResponse(path, media_type=media_type, headers=headers)


@router.get("/map", include_in_schema=False)
def map_page(request: Request) -> Response:
    """The web map."""
    return _serve(request, STATIC / "map" / "index.html", "text/html; charset=utf-8")


@router.get("/docs", include_in_schema=False)
def docs_page(request: Request) -> HTMLResponse:
    """Swagger UI on the OpenAPI document, loading only files served here.

    FastAPI's own ``/docs`` (switched off in :func:`app.main.create_app`) loads
    Swagger UI from a CDN; this page is the same but for the vendored copy.  URLs
    keep the proxy's root path.  ``validatorUrl`` is off, or Swagger UI could ask
    validator.swagger.io for a badge.
    """
    root = str(request.scope.get("root_path", "")).rstrip("/")
    assets = f"{root}/static/{SWAGGER_UI}"
    page = get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - API documentation",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon-32x32.png",
        swagger_ui_parameters={"validatorUrl": None},
    )
    # the page starts Swagger UI with one inline script: allow exactly that one
    inline = _INLINE_SCRIPT.findall(bytes(page.body).decode())
    page.headers["Content-Security-Policy"] = content_security_policy(
        *(script_hash(source) for source in inline)
    )
    return page


@router.get("/static/{folder:path}/{name}", include_in_schema=False)
def static_file(request: Request, folder: str, name: str) -> Response:
    """One of the pages' static files (a fixed list)."""
    media_type = _FILES.get(folder, {}).get(name)
    if media_type is None:
        raise NotFound(f"no static file {folder}/{name}")
    return _serve(request, STATIC / folder / name, media_type)
