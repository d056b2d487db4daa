"""The FastAPI app factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware

from app import problems
from app.head import HeadAsGet
from app.headers import SecurityHeaders
from app.openapi import install_openapi30
from app.read_routing import ReadRouting
from app.routers import (
    analysis,
    exports,
    features,
    field,
    households,
    meta,
    profiles,
    tiles,
    tokens,
    web,
)
from app.routers import imports as imports_router
from app.routers import traces as traces_router
from geo.core.db import Database
from geo.core.feed import ChangeFeed
from geo.core.settings import Settings, get_settings
from geo.core.throttle import FailureThrottle
from geo.core.uploads import use_spool_dir
from geo.imports.jobs import ImportWorker

__all__ = ["create_app"]

VERSION = "0.1.0"


def create_app(settings: Settings | None = None, *, database: Database | None = None) -> FastAPI:
    """Build the Makazi app.

    Parameters
    ----------
    settings
        Configuration; read from ``MAKAZI_*`` variables when omitted.
    database
        A ready :class:`~geo.core.db.Database` (tests pass one bound to a
        transaction).  When omitted the lifespan creates the engines from
        ``settings`` and disposes of them on shutdown.
    """
    settings = settings or get_settings()
    logging.getLogger("makazi").setLevel(settings.log_level.upper())
    use_spool_dir(settings.spool_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = database or Database.from_settings(settings)
        app.state.db = db
        feed = None
        listen_url = db.notifications_url()
        if settings.tile_change_feed and listen_url is not None:
            on_write = db.note_write if db.replicas else None
            feed = ChangeFeed(listen_url, on_write=on_write).start()
        app.state.change_feed = feed
        # Queued imports run in this process too (not on a test's bound database).
        worker = None
        if database is None and settings.import_workers:
            worker = ImportWorker(db, settings).start()
        try:
            yield
        finally:
            if worker is not None:
                worker.stop()
            if feed is not None:
                feed.stop()
            if database is None:
                db.dispose()

    app = FastAPI(
        title="Makazi",
        version=VERSION,
        description="Mapping service for informal settlements.",
        openapi_url="/api",
        docs_url=None,  # /docs is app.routers.web.docs_page: Swagger UI served from here
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.token_cache = {}
    app.state.token_throttle = FailureThrottle(limit=settings.token_failures_per_minute)
    app.state.change_feed = None
    app.state.conformance = [*meta.CORE_CONFORMANCE, *features.CONFORMANCE]
    app.state.extent_cache = {}
    if database is not None:
        app.state.db = database
    problems.install(app)
    # level 4: most of level 9's saving on GeoJSON at a fraction of its CPU
    app.add_middleware(GZipMiddleware, minimum_size=1024, compresslevel=4)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(ReadRouting, max_held_bytes=int(settings.held_answer_max_mb * 2**20))
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "If-Match", "Idempotency-Key"],
            expose_headers=["ETag", "Location", "Content-Crs", "X-Request-ID"],
        )
    app.add_middleware(HeadAsGet)  # outermost: everything inside sees a GET
    app.include_router(meta.router)
    app.include_router(analysis.router)
    app.include_router(profiles.router)
    app.include_router(features.router)
    app.include_router(households.router)
    app.include_router(exports.router)
    app.include_router(tiles.router)
    app.include_router(web.router)
    app.include_router(field.router)
    app.include_router(tokens.router)
    app.include_router(traces_router.router)
    app.include_router(imports_router.router)
    install_openapi30(app)
    return app
