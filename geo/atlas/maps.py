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

__all__ = ["FACILITY_COLOURS", "FACILITY_STYLE", "USE_COLOURS", "MapLayers", "render_window"]

USE_COLOURS: dict[str, str] = {
    "residential": "#c9a26b",
    "business": "#3b6ea8",
    "mixed": "#8c6bb1",
    "religious": "#5c940d",
    "school": "#f59f00",
    "clinic": "#e8590c",
    "toilet": "#0c8599",
    "water_point": "#22b8cf",
    "other": "#868e96",
}
"""Fill of a structure by use (unknown: ``other``): the web map's ``USE_COLOURS`` (map.js)."""
FACILITY_COLOURS: dict[str, str] = {
    "water_point": "#1098ad",
    "toilet_block": "#0b7285",
    "school": "#f59f00",
    "clinic": "#d6336c",
    "drainage": "#4dabf7",
    "road": "#495057",
    "other": "#868e96",
}
"""Colour of a facility by type: the web map's ``FACILITY_COLOURS`` (map.js)."""
FACILITY_MARKERS: dict[str, str] = {
    "water_point": "o",
    "toilet_block": "s",
    "school": "^",
    "clinic": "P",
    "drainage": "v",
    "road": "X",
    "other": "D",
}
"""Matplotlib marker of a facility by type (lines and areas at a point on them)."""
FACILITY_STYLE: dict[str, tuple[str, str]] = {
    kind: (FACILITY_MARKERS[kind], colour) for kind, colour in FACILITY_COLOURS.items()
}
"""Marker and colour of a facility by type (a type not listed: ``other``)."""
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
    key_map: bool = False,
) -> Image.Image:
    """An RGB image of the window at ``size_mm`` on paper (:data:`DPI`).

    Structures in ``highlight`` (None: all) are filled by use and outlined in
    black; the others are pale context.  ``outline_only`` (the cover) draws
    every structure pale and the boundary bold; ``key_map`` (a page's locator,
    a few centimetres wide) draws them pale with a thin boundary and no facilities.
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
        bright = not (outline_only or key_map) and (highlight is None or structure.id in highlight)
        if structure.geom.geom_type == "Point":
            points.append((structure.x, structure.y, bright))
            continue
        for ring in _rings(structure.geom):
            if bright:
                shown.append(ring)
                colours.append(USE_COLOURS.get(structure.use or "other", USE_COLOURS["other"]))
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
        if key_map:
            axes.plot(xs, ys, color="#555555", lw=0.8)
        else:
            axes.plot(xs, ys, color="#c62828", lw=2.4 if outline_only else 1.6, ls="--")
    if key_map:
        return _image(canvas)
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
    return _image(canvas)


def _image(canvas: FigureCanvasAgg) -> Image.Image:
    canvas.draw()  # type: ignore[no-untyped-call]
    width, height = canvas.get_width_height()
    pixels = canvas.buffer_rgba()  # type: ignore[no-untyped-call]
    return Image.frombuffer("RGBA", (width, height), pixels).convert("RGB")
