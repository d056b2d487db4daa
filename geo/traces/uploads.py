"""``makazi trace upload FILE...``: many GPX files, with a progress bar.

Two ways to send them:

* to a running server (``--url`` + ``--token``): each file is streamed to
  ``POST /traces`` with an ``Idempotency-Key`` derived from its bytes, so a
  re-run after a dropped connection never duplicates a trace;
* straight into the database (no token): the same ingest the server runs, as
  owner ``--owner``.

Either way, a file already uploaded by the same owner counts as "existing".
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

__all__ = ["UploadReport", "upload_files"]


@dataclass
class UploadReport:
    """What happened to each file."""

    stored: list[tuple[str, int]] = field(default_factory=list)
    existing: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    points: int = 0

    def summary(self) -> str:
        """One line for the terminal."""
        return (
            f"{len(self.stored)} stored, {len(self.existing)} already there, "
            f"{len(self.failed)} failed; {self.points:,} points"
        )


def _file_key(path: Path, name: str | None, visibility: str) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    digest.update(f"|{name or ''}|{visibility}".encode())
    return "makazi-cli-" + digest.hexdigest()[:48]


def _via_http(url: str, token: str, timeout: float) -> Callable[..., tuple[int, dict[str, Any]]]:
    import httpx

    client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)

    def send(
        path: Path, name: str | None, visibility: str, settlement_id: int | None
    ) -> tuple[int, dict[str, Any]]:
        params: dict[str, Any] = {"visibility": visibility}
        if name:
            params["name"] = name
        if settlement_id is not None:
            params["settlement_id"] = settlement_id
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/octet-stream",
            "Idempotency-Key": _file_key(path, name, visibility),
        }
        with path.open("rb") as handle:
            response = client.post("/traces", content=handle, params=params, headers=headers)
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text[:200]}
        if response.headers.get("idempotent-replayed") == "true":
            return 200, body  # an earlier run stored it: nothing new this time
        return response.status_code, body

    return send


def _via_database(
    database_url: str, settings: Any, owner: str
) -> Callable[..., tuple[int, dict[str, Any]]]:
    from geo.core.db import Database, make_engine
    from geo.core.errors import MakaziError
    from geo.core.uploads import spool_stream
    from geo.traces.ingest import TraceLimits, ingest_trace

    db = Database(make_engine(database_url, settings, pool_size=1))
    limits = TraceLimits.from_settings(settings)

    def send(
        path: Path, name: str | None, visibility: str, settlement_id: int | None
    ) -> tuple[int, dict[str, Any]]:
        try:
            with path.open("rb") as handle:
                body = spool_stream(handle, limit=settings.max_upload_bytes)
            try:
                with db.begin(owner) as conn:
                    result = ingest_trace(
                        conn,
                        owner=owner,
                        body=body,
                        name=name,
                        visibility=visibility,
                        settlement_id=settlement_id,
                        limits=limits,
                    )
            finally:
                body.close()
        except MakaziError as exc:
            return 400, {"detail": exc.detail}
        payload: dict[str, Any] = json.loads(result.body)
        return (201 if result.created else 200), payload

    return send


def upload_files(
    paths: Sequence[Path],
    *,
    name: str | None,
    visibility: str,
    settlement_id: int | None = None,
    url: str | None = None,
    token: str | None = None,
    database_url: str | None = None,
    settings: Any = None,
    owner: str = "cli",
    timeout: float = 600.0,
    progress: bool = True,
) -> UploadReport:
    """Upload ``paths`` one by one; a failing file does not stop the others.

    With several files, ``name`` becomes ``name (file name)``; without it each
    trace is named after its file.
    """
    if url and token:
        send = _via_http(url, token, timeout)
    elif database_url:
        send = _via_database(database_url, settings, owner)
    else:
        raise ValueError("give --url and --token, or run against the database")
    report = UploadReport()
    bar = tqdm(paths, unit="file", disable=not progress, dynamic_ncols=True)
    for path in bar:
        bar.set_postfix_str(path.name[-30:])
        label = path.name if not name else (name if len(paths) == 1 else f"{name} ({path.name})")
        try:
            status, body = send(path, label, visibility, settlement_id)
        except OSError as exc:
            status, body = 0, {"detail": str(exc)}
        if status in (200, 201):
            (report.stored if status == 201 else report.existing).append((str(path), body["id"]))
            report.points += int(body.get("stats", {}).get("points", 0))
        else:
            detail = str(body.get("detail", body))
            report.failed.append((str(path), f"{status or 'error'}: {detail}"))
            tqdm.write(f"{path}: {detail}", file=sys.stderr)
    return report
