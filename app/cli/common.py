"""What every ``makazi`` command shares: settings, the database it runs against, errors."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from geo.core.cluster import EmbeddedCluster
from geo.core.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = [
    "CommandError",
    "cluster_of",
    "database_url",
    "engine_for",
    "load_settings",
    "migrate",
    "open_engine",
    "output_file",
    "start_cluster",
    "write_chunks",
]


class CommandError(Exception):
    """A failure to report as one line on stderr."""


def output_file(name: str) -> Path:
    """An ``-o`` path; :class:`CommandError` naming its folder when that does not exist."""
    output = Path(name)
    if not output.parent.is_dir():
        raise CommandError(f"cannot write {output}: there is no folder {output.parent}")
    return output


def load_settings() -> Settings:
    """The ``MAKAZI_*`` settings, or a :class:`CommandError` naming the bad one."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "MAKAZI_" + str(first["loc"][0]).upper() if first["loc"] else "MAKAZI_*"
        raise CommandError(f"bad setting {name}: {first['msg']}") from exc


def cluster_of(settings: Settings) -> EmbeddedCluster:
    """The embedded cluster in the settings' data dir."""
    return EmbeddedCluster(settings.data_dir)


@contextlib.contextmanager
def database_url(settings: Settings, *, keep_running: bool = False) -> Iterator[str]:
    """Yield a database URL; start the embedded cluster for the duration if needed."""
    from geo.core.cluster import ensure_postgis
    from geo.core.db import resolve_url

    if settings.database_url:
        yield resolve_url(settings)
        return
    ensure_postgis(install=os.geteuid() == 0, quiet=True)
    cluster = cluster_of(settings)
    started = start_cluster(cluster)
    try:
        yield cluster.url()
    finally:
        if started and not keep_running:
            cluster.stop()


def start_cluster(cluster: EmbeddedCluster) -> bool:
    """Start the embedded cluster; say where, once, when this creates a new database.

    Returns whether this call started it (False: it was running).
    """
    new = not cluster.initialised
    started = cluster.start()
    if new:
        print(f"makazi: created a new database in {cluster.data_dir}", file=sys.stderr)
    return started


def engine_for(settings: Settings, url: str) -> Engine:
    """A small engine for one command."""
    from geo.core.db import make_engine

    return make_engine(url, settings, pool_size=2)


def migrate(url: str) -> None:
    """Bring the database to the newest schema revision."""
    from geo.core.db import migrate as upgrade

    upgrade(url)


@contextlib.contextmanager
def open_engine(settings: Settings, *, migrated: bool = True) -> Iterator[Engine]:
    """An engine on the database for one command, disposed of afterwards.

    The embedded cluster runs for the duration when it is the database;
    ``migrated`` brings the schema to the newest revision first.
    """
    with database_url(settings) as url:
        if migrated:
            migrate(url)
        engine = engine_for(settings, url)
        try:
            yield engine
        finally:
            engine.dispose()


def write_chunks(chunks: Iterable[bytes], path: Path | str) -> int:
    """Write streamed ``chunks`` to ``path``; the number of bytes written."""
    size = 0
    with open(path, "wb") as out:
        for chunk in chunks:
            out.write(chunk)
            size += len(chunk)
    return size
