"""Typed contracts of the trace documents: one trace's summary and the trace list.

The summary is built by :func:`geo.traces.reads.trace_summary` from the trace
row, whose ``stats`` :mod:`geo.traces.ingest` writes and whose ``dropped``
:class:`geo.traces.cleaning.Dropped` groups; the HTTP layer adds ``links``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from geo.core.documents import Document, Omitted, omitted
from geo.core.privacy import Visibility
from geo.layers.documents import Link

__all__ = ["DroppedExample", "DroppedGroup", "TraceList", "TraceStats", "TraceSummary"]


class TraceStats(Document):
    """What the upload held once cleaned."""

    points: int = Field(description="Track points kept")
    tracks: int
    segments: int = Field(description="Track segments")
    routes: int
    waypoints: int
    route_points: int
    length_m: float = Field(description="Geodesic length of the track segments, metres")
    duration_s: float | None = Field(description="First to last timed track point; null untimed")
    started_at: datetime | None
    ended_at: datetime | None
    bbox: list[float] | None = Field(description="[west, south, east, north] of the kept points")
    gpx_version: str | None = Field(description="The GPX version attribute, when given")
    size_bytes: int = Field(description="Size of the upload as sent")
    content_type: str = Field(description="What the upload was: GPX, gzip, bzip2 or zip")


class DroppedExample(Document):
    """The first dropped point of a group: where it was in the file."""

    index: int = Field(description="0-based index among the points of its kind")
    track: int | None
    segment: int | None
    value: str | Omitted = omitted("The unreadable value, when there was one")


class DroppedGroup(Document):
    """Points left out for one reason."""

    kind: Literal["trkpt", "rtept", "wpt"]
    reason: str
    count: int
    first: DroppedExample


class TraceSummary(Document):
    """A trace's metadata: ``POST /traces``, ``GET /traces/{id}``, ``PATCH /traces/{id}``."""

    id: int
    name: str
    owner: str
    visibility: Visibility
    settlement_id: int | None
    version: int = Field(description="Also the ETag; name it in If-Match to change the trace")
    stats: TraceStats
    dropped: list[DroppedGroup] = Field(description="Largest group first")
    warnings: list[str] = Field(description="What was odd but readable, one sentence each")
    created_at: datetime
    updated_at: datetime
    links: list[Link]


class TraceList(Document):
    """``GET /traces``: the traces the caller may see, newest first."""

    traces: list[TraceSummary]
    numberReturned: int  # noqa: N815 (OGC member name)
    links: list[Link]
