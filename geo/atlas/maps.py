"""Map images for the atlas, drawn on matplotlib's Agg canvas (no display, no pyplot state).

An image covers exactly a ground window (metres, UTM 37S) at the frame's size
on paper, so a point's place on the page follows from the window alone: the
page draws structure numbers over the image as text (see :mod:`geo.atlas.pdf`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import shapely
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from PIL import Image
from shapely.geometry.base import BaseGeometry

from geo.atlas.data import AtlasData, Facility, Structure

__all__ = ["USE_COLOURS", "MapLayers", "render_window"]

USE_COLOURS: dict[str, str] = {
    "residential": "#f3d9a4",
    "business": "#9fc5e8",
    "mixed": "#c9b3e6",
    "religious": "#e6b8b8",
    "school": "#b6d7a8",
    "clinic": "#f4b6c2",
    "toilet": "#c8a27c",
    "water_point": "#5fc9c0",
    "other": "#d9d9d9",
}
"""Fill of a structure by use (unknown: the ``other`` grey)."""
FACILITY_STYLE: dict[str, tuple[str, str]] = {
    "water_point": ("o", "#1f5fa8"),
    "toilet_block": ("s", "#7a4a1d"),
    "school": ("^", "#2e7d32"),
    "clinic": ("P", "#c62828"),
    "other": ("D", "#555555"),
}
"""Marker and colour of a facility by type (drainage, road and other: ``other``)."""
DPI = 170
"""Resolution of map images; the numbers over them are text, sharp at any zoom."""


class MapLayers:
    """A settlement's geometries with a spatial index, drawn window by window."""

    def __init__(self, data: AtlasData) -> None:
        self.data = data
        self._tree = shapely.STRtree([s.geom for s in data.structures])
        self._facilities = shapely.STRtree([f.geom for f in data.facilities])

    def facilities_in(self, x0: float, y0: float, x1: float, y1: float) -> list[Facility]:
        """Facilities whose location meets the window."""
        hits = self._facilities.query(shapely.box(x0, y0, x1, y1))
        return [self.data.facilities[i] for i in sorted(int(h) for h in hits)]

    def structures_in(self, x0: float, y0: float, x1: float, y1: float) -> list[Structure]:
        """Structures whose footprint meets the window."""
        hits = self._tree.query(shapely.box(x0, y0, x1, y1))
        return [self.data.structures[i] for i in sorted(int(h) for h in hits)]


def _rings(geom: BaseGeometry) -> Iterable[Sequence[tuple[float, float]]]:
    for part in getattr(geom, "geoms", [geom]):
        if part.geom_type == "Polygon":
            yield list(part.exterior.coords)


def render_window(
    layers: MapLayers,
    window: tuple[float, float, float, float],
    size_mm: tuple[float, float],
    *,
    highlight: set[int] | None = None,
    outline_only: bool = False,
) -> Image.Image:
    """An RGB image of the window at ``size_mm`` on paper (:data:`DPI`).

    Structures in ``highlight`` (None: all) are filled by use and outlined in
    black; the others are pale context.  ``outline_only`` (the cover) draws
    every structure pale and the boundary bold.
    """
    x0, y0, x1, y1 = window
    figure = Figure(figsize=(size_mm[0] / 25.4, size_mm[1] / 25.4), dpi=DPI)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    axes.set_axis_off()
    axes.set_xlim(x0, x1)
    axes.set_ylim(y0, y1)
    axes.set_aspect("equal", adjustable="box")
    shown, context, points = [], [], []
    colours = []
    for structure in layers.structures_in(x0, y0, x1, y1):
        bright = not outline_only and (highlight is None or structure.id in highlight)
        if structure.geom.geom_type == "Point":
            points.append((structure.x, structure.y, bright))
            continue
        for ring in _rings(structure.geom):
            if bright:
                shown.append(ring)
                colours.append(USE_COLOURS.get(structure.use or "other", "#d9d9d9"))
            else:
                context.append(ring)
    if context:
        axes.add_collection(
            PolyCollection(context, facecolors="#eeeeee", edgecolors="#9e9e9e", linewidths=0.3)
        )
    if shown:
        axes.add_collection(
            PolyCollection(shown, facecolors=colours, edgecolors="#222222", linewidths=0.5)
        )
    for bright in (False, True):
        xy = [(x, y) for x, y, b in points if b == bright]
        if xy:
            xs, ys = zip(*xy, strict=True)
            axes.plot(xs, ys, "s", ms=3, ls="none", color="#222222" if bright else "#9e9e9e")
    for ring in _rings(layers.data.boundary):
        xs, ys = zip(*ring, strict=True)
        axes.plot(xs, ys, color="#c62828", lw=2.4 if outline_only else 1.6, ls="--")
    groups: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    for facility in layers.facilities_in(x0, y0, x1, y1):
        kind = facility.type if facility.type in FACILITY_STYLE else "other"
        point = facility.geom.representative_point()
        broken = facility.condition in {"broken", "needs_repair"}
        groups.setdefault((kind, broken), []).append((point.x, point.y))
    for (kind, broken), xy in groups.items():
        marker, colour = FACILITY_STYLE[kind]
        xs, ys = zip(*xy, strict=True)
        axes.plot(
            xs, ys, marker, ls="none", ms=6, mfc="white" if broken else colour, mec=colour, mew=1.2
        )
    canvas.draw()  # type: ignore[no-untyped-call]
    width, height = canvas.get_width_height()
    pixels = canvas.buffer_rgba()  # type: ignore[no-untyped-call]
    return Image.frombuffer("RGBA", (width, height), pixels).convert("RGB")
