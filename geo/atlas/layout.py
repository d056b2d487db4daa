"""Blocks and map pages: which structures go on which page, at which print scale.

A block is the painted-number prefix (``KB-04`` of ``KB-04-0117``).  Structures
whose number has no prefix are grouped into a grid of page-sized cells named
``Grid C3`` (column letter, row number from the north-west).  A block that does
not fit one page at the scale its structures' spacing allows
(:func:`legible_scale`, at most 1:1000) is split into page-sized tiles, so every
structure number stays legible at print scale.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, replace

import numpy as np
import shapely

from geo.atlas.data import AtlasData, Structure

__all__ = ["PAPER", "Block", "MapPage", "Paper", "legible_scale", "plan_blocks", "plan_pages"]

SMALLEST_SCALE = 1000
"""Largest scale denominator of a map page (1:1000: a 4 m structure is 4 mm)."""
LARGEST_SCALE = 300
"""Smallest denominator: a tiny block is not blown up past 1:300."""
PADDING_M = 6.0
LABEL_CHAR_MM = 1.3
"""Width of one character of a map label (Helvetica-Bold 6.5 pt digits), mm."""


@dataclass(frozen=True)
class Paper:
    """A page size and the map frame on it, in millimetres."""

    name: str
    width: float
    height: float
    margin: float = 12.0
    header: float = 16.0
    footer: float = 12.0
    legend: float = 8.0

    @property
    def landscape(self) -> bool:
        """Whether the page is turned (wider than tall)."""
        return self.width > self.height

    def turned(self) -> Paper:
        """The same sheet turned a quarter: landscape for portrait and back."""
        return replace(self, width=self.height, height=self.width)

    @property
    def frame(self) -> tuple[float, float]:
        """Width and height of the map frame (mm)."""
        return (
            self.width - 2 * self.margin,
            self.height - 2 * self.margin - self.header - self.footer - self.legend,
        )


PAPER = {"A4": Paper("A4", 210.0, 297.0), "A3": Paper("A3", 297.0, 420.0)}


@dataclass(frozen=True)
class Block:
    """Structures printed together: one map page (or a few tiles) and one sheet."""

    name: str
    structures: list[Structure]
    prefix: str | None

    def label(self, structure: Structure) -> str:
        """The number as the map shows it: without the block prefix the title names."""
        number = structure.number or f"#{structure.id}"
        if self.prefix and number.startswith(self.prefix) and len(number) > len(self.prefix) + 1:
            return number[len(self.prefix) + 1 :]
        return number


@dataclass(frozen=True)
class MapPage:
    """One map page: a block (or a tile of it) and the ground window it shows."""

    block: Block
    tile: str | None
    x0: float
    y0: float
    x1: float
    y1: float
    scale: int
    structures: list[Structure]
    paper: Paper


def _grid_name(column: int, row: int) -> str:
    letters = string.ascii_uppercase
    name = letters[column % 26]
    if column >= 26:
        name = letters[column // 26 - 1] + name
    return f"Grid {name}{row + 1}"


def plan_blocks(data: AtlasData, paper: Paper) -> list[Block]:
    """The blocks of a settlement, in number order; unnumbered structures on a grid."""
    named: dict[str, list[Structure]] = {}
    loose: list[Structure] = []
    for structure in data.structures:
        if structure.block:
            named.setdefault(structure.block, []).append(structure)
        else:
            loose.append(structure)
    blocks = [Block(name, items, name) for name, items in sorted(named.items())]
    if loose:
        width_m, height_m = (side * SMALLEST_SCALE / 1000 for side in paper.frame)
        minx, _miny, _maxx, maxy = data.boundary.bounds
        cells: dict[tuple[int, int], list[Structure]] = {}
        for structure in loose:
            column = max(0, int((structure.x - minx) // width_m))
            row = max(0, int((maxy - structure.y) // height_m))
            cells.setdefault((column, row), []).append(structure)
        blocks += [
            Block(_grid_name(column, row), items, None)
            for (column, row), items in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0]))
        ]
    return blocks


def _window(
    cx: float, cy: float, width_m: float, height_m: float
) -> tuple[float, float, float, float]:
    return (cx - width_m / 2, cy - height_m / 2, cx + width_m / 2, cy + height_m / 2)


def _label_mm(block: Block) -> float:
    """Width on paper of the block's longest map label (bold 6.5 pt digits), padded."""
    longest = max(len(block.label(s)) for s in block.structures)
    return LABEL_CHAR_MM * longest + 1.3


def legible_scale(block: Block) -> int:
    """The largest scale denominator at which neighbouring numbers do not collide.

    Structures closer than their labels are wide would print their numbers on top
    of each other, so the spacing of the block's structures (the 30th percentile
    of each one's distance to its nearest neighbour) sets the scale, never
    smaller than 1:1000 allows and never larger than 1:300.
    """
    if len(block.structures) < 2:
        return SMALLEST_SCALE
    points = shapely.points([(s.x, s.y) for s in block.structures])
    tree = shapely.STRtree(points)
    _pairs, distances = tree.query_nearest(points, exclusive=True, return_distance=True)
    spacing = float(np.percentile(distances, 30)) if len(distances) else 0.0
    denominator = spacing * 1000 / _label_mm(block)
    return int(min(SMALLEST_SCALE, max(LARGEST_SCALE, denominator // 50 * 50)))


def plan_pages(block: Block, paper: Paper) -> list[MapPage]:
    """The map pages of a block: one page when it fits at a legible scale, else tiles.

    The sheet is turned to landscape when that takes fewer pages, or the same
    number at a larger scale (a long thin block along a boundary fills a
    landscape page instead of a strip of a portrait one).
    """
    portrait = _plan_on(block, paper)
    landscape = _plan_on(block, paper.turned())
    if (len(landscape), landscape[0].scale) < (len(portrait), portrait[0].scale):
        return landscape
    return portrait


def _plan_on(block: Block, paper: Paper) -> list[MapPage]:
    frame_w, frame_h = paper.frame
    bounds = [s.geom.bounds for s in block.structures]
    x0 = min(b[0] for b in bounds) - PADDING_M
    y0 = min(b[1] for b in bounds) - PADDING_M
    x1 = max(b[2] for b in bounds) + PADDING_M
    y1 = max(b[3] for b in bounds) + PADDING_M
    limit = legible_scale(block)
    needed = max((x1 - x0) / frame_w, (y1 - y0) / frame_h) * 1000
    if needed <= limit:
        scale = max(LARGEST_SCALE, math.ceil(needed / 50.0) * 50)
        window = _window(
            (x0 + x1) / 2, (y0 + y1) / 2, frame_w * scale / 1000, frame_h * scale / 1000
        )
        return [MapPage(block, None, *window, scale, block.structures, paper)]
    tile_w, tile_h = frame_w * limit / 1000, frame_h * limit / 1000
    step_w, step_h = tile_w - 2 * PADDING_M, tile_h - 2 * PADDING_M
    columns = math.ceil((x1 - x0) / step_w)
    rows = math.ceil((y1 - y0) / step_h)
    tiles: list[tuple[tuple[float, float, float, float], list[Structure]]] = []
    for row in range(rows):
        for column in range(columns):
            left, top = x0 + column * step_w, y1 - row * step_h
            inside = [
                s
                for s in block.structures
                if left <= s.x < left + step_w and top - step_h < s.y <= top
            ]
            if inside:
                centre = (left + step_w / 2, top - step_h / 2)
                tiles.append((_window(*centre, tile_w, tile_h), inside))
    return [
        MapPage(block, f"part {k} of {len(tiles)}", *window, limit, inside, paper)
        for k, (window, inside) in enumerate(tiles, start=1)
    ]
