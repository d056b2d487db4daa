"""Typed contract of the TileJSON document that :func:`geo.tiles.tilejson.tilejson` builds."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from geo.core.documents import Document

__all__ = ["TileJson", "VectorLayer"]


class VectorLayer(Document):
    """One layer of the vector tiles."""

    id: str
    description: str
    minzoom: int
    maxzoom: int
    fields: dict[str, Literal["Number", "String"]] = Field(description="{field: type}")


class TileJson(Document):
    """``GET /tiles/tilejson.json``: TileJSON 3.0.0 of the vector tiles."""

    tilejson: Literal["3.0.0"]
    name: str
    description: str
    version: str
    scheme: Literal["xyz"]
    tiles: list[str] = Field(description="URL templates with {z}/{x}/{y}")
    minzoom: int
    maxzoom: int
    bounds: list[float] = Field(description="[west, south, east, north] of the data")
    center: list[float] = Field(description="[longitude, latitude, zoom]")
    vector_layers: list[VectorLayer]
