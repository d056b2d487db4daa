"""The printable atlas: a cover with the profile, map pages and verification sheets per block.

Pages are laid out with ReportLab on A4 or A3.  Maps are matplotlib images
(:mod:`geo.atlas.maps`); structure numbers are drawn over them as text, so they
stay sharp in print and searchable in the PDF, each moved off its neighbours
(with a leader line) where they would overlap.  Every page names the settlement,
the moment the data is of, the role the copy was made for and whether only
verified records were counted.  No personal field is printed for any role; a
suppressed count prints as ``suppressed``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from reportlab import rl_config
from reportlab.lib.colors import Color, HexColor, black, white
from reportlab.lib.units import mm
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen.canvas import Canvas

from geo.atlas.data import AtlasData, Structure
from geo.atlas.layout import PAPER, Block, MapPage, Paper, plan_blocks, plan_pages
from geo.atlas.maps import FACILITY_STYLE, USE_COLOURS, MapLayers, render_window
from geo.core.errors import Unavailable
from geo.core.privacy import MIN_COUNT, sees_raw_counts
from geo.profiles.fields import COMPUTED, REPORTED

__all__ = ["AtlasRequest", "sheet_rows", "write_atlas"]

LABEL_FONT, LABEL_SIZE = "Helvetica-Bold", 6.5
TEXT_FONT, BOLD_FONT = "Helvetica", "Helvetica-Bold"
ROW_MM = 7.5
LOCATOR_MM = 14.0
"""Height of the key map in a map page's header."""
SYMBOL_MM = 2.6
"""Size of a facility symbol on a map (6 pt), kept clear of labels."""
LEGEND_INDENT_MM = 15.0
"""Where a legend row's entries start, after its caption (Structures, Facilities)."""
SHEET_COLUMNS = (
    ("#", 10),
    ("Structure number", 38),
    ("Use", 28),
    ("Households", 22),
    ("Review state", 26),
    ("Correction / note", 0),  # the rest of the width
)
_PALE = Color(1, 1, 1, alpha=0.8)

# Images go into the PDF as binary deflate streams: ASCII85 (the default) makes them a
# quarter larger and its pure-Python encoder was the slowest step of a large atlas.
rl_config.useA85 = 0


def sheet_rows(paper: Paper) -> int:
    """Rows of a verification sheet page."""
    return int((paper.frame[1] + paper.legend - 2 * ROW_MM) // ROW_MM)


@dataclass
class AtlasRequest:
    """What to print and for whom.

    Attributes
    ----------
    role
        The caller's role, printed on every page (and deciding suppression).
    as_of
        The past moment printed (None: now).
    since
        Print a change page: structures added and removed since then.
    """

    role: str | None
    verified: bool = False
    as_of: datetime | None = None
    since: datetime | None = None
    paper: str = "A4"
    made_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def _value(name: str, value: Any, suppressed: set[str]) -> str:
    if value is None:
        return "suppressed" if name in suppressed else "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        parts = [
            f"{key.replace('_', ' ')} {_value(f'{name}.{key}', item, suppressed)}"
            for key, item in value.items()
        ]
        return ", ".join(parts) or "-"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) or "-"
    return str(value)


def _wrap(text: str, font: str, size: float, width: float) -> list[str]:
    lines, line = [], ""
    for word in text.split(" "):
        candidate = f"{line} {word}".strip()
        if line and stringWidth(candidate, font, size) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return [*lines, line] if line else lines


@dataclass
class _Label:
    x: float
    y: float
    w: float
    h: float

    def hits(self, other: _Label) -> bool:
        return not (
            self.x + self.w <= other.x
            or other.x + other.w <= self.x
            or self.y + self.h <= other.y
            or other.y + other.h <= self.y
        )


# Where to try a label, in label heights / widths from its structure's point.
_OFFSETS = [(0.0, 0.0)] + [
    (math.cos(a) * r, math.sin(a) * r)
    for r in (1.0, 1.6, 2.3, 3.2)
    for a in (
        math.pi / 2,
        -math.pi / 2,
        0.0,
        math.pi,
        math.pi / 4,
        -math.pi / 4,
        3 * math.pi / 4,
        -3 * math.pi / 4,
    )
]


def _place(
    px: float,
    py: float,
    width: float,
    height: float,
    placed: list[_Label],
    frame: tuple[float, float, float, float],
) -> _Label:
    """A free spot for a ``width`` x ``height`` label near (px, py) inside ``frame`` (mm).

    Tried on the point first, then on rings around it; when all are taken the label
    stays on its point (crowded: never dropped).  The label is added to ``placed``.
    """
    fx, fy, fw, fh = frame
    best = _Label(px - width / 2, py - height / 2, width, height)
    for dx, dy in _OFFSETS:
        box = _Label(
            px + dx * width * 0.9 - width / 2, py + dy * height - height / 2, width, height
        )
        inside = fx <= box.x and box.x + box.w <= fx + fw and fy <= box.y
        if inside and box.y + box.h <= fy + fh and not any(box.hits(o) for o in placed):
            best = box
            break
    placed.append(best)
    return best


class _Atlas:
    """Draws the pages on one canvas."""

    def __init__(
        self,
        out: IO[bytes],
        data: AtlasData,
        profile: dict[str, Any],
        request: AtlasRequest,
        deadline: float,
        timeout_s: float,
    ) -> None:
        self.paper = self.sheet_paper = PAPER[request.paper]
        self.data, self.profile, self.request = data, profile, request
        self.canvas = Canvas(out, pagesize=(self.paper.width * mm, self.paper.height * mm))
        self.canvas.setTitle(f"Makazi atlas: {data.name}")
        self.canvas.setAuthor("Makazi")
        self.layers = MapLayers(data)
        self.deadline, self.timeout_s = deadline, timeout_s
        self.page, self.pages = 0, 0
        self.suppressed = set(profile["suppressed"])
        self._locator: tuple[ImageReader, tuple[float, float, float, float], float] | None = None

    # -- frame of every page ---------------------------------------------------------
    def _start(self, title: str, subtitle: str = "", paper: Paper | None = None) -> None:
        if time.monotonic() > self.deadline:
            raise Unavailable(
                f"the atlas took longer than {self.timeout_s:g} s (MAKAZI_ATLAS_TIMEOUT_S); "
                "print fewer blocks or raise the setting"
            )
        self.page += 1
        self.paper = paper or self.sheet_paper
        c, p = self.canvas, self.paper
        c.setPageSize((p.width * mm, p.height * mm))
        top = (p.height - p.margin) * mm
        c.setFillColor(black)
        c.setFont(BOLD_FONT, 14)
        c.drawString(p.margin * mm, top - 6 * mm, title)
        if subtitle:
            c.setFont(TEXT_FONT, 9)
            c.drawString(p.margin * mm, top - 11.5 * mm, subtitle)
        c.setFont(TEXT_FONT, 8)
        c.drawString(p.margin * mm, (p.margin + 3) * mm, self._source())
        c.drawRightString(
            (p.width - p.margin) * mm, (p.margin + 3) * mm, f"page {self.page} of {self.pages}"
        )
        c.setFont(TEXT_FONT, 7)
        c.drawString(p.margin * mm, p.margin * mm, self._basis())
        c.setStrokeColor(HexColor("#888888"))
        c.setLineWidth(0.4)
        c.line(p.margin * mm, (p.margin + 7) * mm, (p.width - p.margin) * mm, (p.margin + 7) * mm)

    def _source(self) -> str:
        """Where the page's data comes from and of when: the first footer line."""
        made = self.request.made_at.astimezone(UTC)
        when = (self.request.as_of or made).astimezone(UTC)
        return (
            f"Makazi — {self.data.name}, data as of {when:%Y-%m-%d %H:%M} UTC, "
            f"printed {made:%Y-%m-%d %H:%M} UTC"
        )

    def _basis(self) -> str:
        """What the counts include and hide, and for whom: the second footer line."""
        role = self.request.role
        counted = (
            "verified structures and households only" if self.request.verified else "all records"
        )
        hidden = "all counts shown" if sees_raw_counts(role) else f"counts below {MIN_COUNT} hidden"
        return (
            f"Source: Makazi database · prepared for role {role or 'public'} · {counted} · {hidden}"
        )

    def _frame_origin(self) -> tuple[float, float]:
        p = self.paper
        return p.margin, p.margin + p.footer + p.legend

    # -- cover -----------------------------------------------------------------------
    def cover(self, blocks: list[Block]) -> None:
        p = self.paper
        self._start(
            f"{self.data.name}: settlement atlas",
            "Profile, block maps and verification sheets for the community forum",
        )
        frame_w = p.frame[0]
        map_h = frame_w * 0.62
        top = p.height - p.margin - p.header
        minx, miny, maxx, maxy = self.data.boundary.bounds
        window = _fit((minx, miny, maxx, maxy), frame_w, map_h, pad=0.06)
        image = render_window(self.layers, window, (frame_w, map_h), outline_only=True)
        x_mm, y_mm = p.margin, top - map_h
        self.canvas.drawImage(ImageReader(image), x_mm * mm, y_mm * mm, frame_w * mm, map_h * mm)
        self.canvas.setStrokeColor(black)
        self.canvas.rect(x_mm * mm, y_mm * mm, frame_w * mm, map_h * mm)
        self._facility_legend(x_mm, y_mm - 5.5)
        metres_per_mm = (window[2] - window[0]) / frame_w
        self._north_and_scale_bar(y_mm - 5.5, _bar_metres(metres_per_mm), metres_per_mm)
        frame = (x_mm, y_mm, frame_w, map_h)
        placed = self._facility_spots(window, frame)  # names cover no symbol, nor each other
        for block in blocks:
            cx = sum(s.x for s in block.structures) / len(block.structures)
            cy = sum(s.y for s in block.structures) / len(block.structures)
            px, py = _to_page(window, frame, cx, cy)
            width, height = _halo_size(block.name, BOLD_FONT, 8)
            box = _place(px, py, width, height, placed, frame)
            lx, ly = box.x + box.w / 2, box.y + box.h / 2
            self._leader(px, py, lx, ly)
            self._halo_text(lx, ly, block.name, BOLD_FONT, 8)
        self._profile_table(y_mm - 11.5)

    def _profile_table(self, top_mm: float) -> None:
        c, p = self.canvas, self.paper
        fields = self.profile["fields"]
        c.setFont(BOLD_FONT, 11)
        c.setFillColor(black)
        c.drawString(p.margin * mm, top_mm * mm, "Profile")
        c.setFont(TEXT_FONT, 7.5)
        c.drawString(
            (p.margin + 16) * mm,
            top_mm * mm,
            "counted: from the map and enumeration · estimated: computed, method named · "
            "reported: agreed by the community",
        )
        names = [*COMPUTED, *REPORTED]
        column_w = p.frame[0] / 2
        y = top_mm - 5.5
        bottom = p.margin + p.footer + 2
        rows = []
        for name in names:
            entry = fields[name]
            text = _value(name, entry["value"], self.suppressed)
            rows.append((name.replace("_", " "), text, entry["basis"]))
        half = math.ceil(len(rows) / 2)
        for column, chunk in enumerate((rows[:half], rows[half:])):
            yy = y
            x = p.margin + column * column_w
            indent = max(stringWidth(label, BOLD_FONT, 7.5) for label, _t, _b in chunk) / mm + 3
            room = column_w - indent - 16
            for label, text, basis in chunk:
                lines = _wrap(text, TEXT_FONT, 7.5, room * mm)[:4] or ["-"]
                if yy - 3.6 * len(lines) < bottom:
                    break
                c.setFont(BOLD_FONT, 7.5)
                c.drawString(x * mm, yy * mm, label)
                c.setFont(TEXT_FONT, 7.5)
                for k, line in enumerate(lines):
                    c.drawString((x + indent) * mm, (yy - 3.4 * k) * mm, line)
                c.setFillColor(HexColor("#666666"))
                c.drawRightString((x + column_w - 3) * mm, yy * mm, basis)
                c.setFillColor(black)
                yy -= 3.6 * len(lines) + 0.8
        method = fields["population"].get("method")
        if method:
            c.setFont(TEXT_FONT, 6.5)
            c.drawString(p.margin * mm, (bottom + 1) * mm, f"population (estimated): {method}")

    # -- change page -----------------------------------------------------------------
    def changes(self, added: list[Structure], removed: list[Structure], since: datetime) -> None:
        p, c = self.paper, self.canvas
        self._start(
            f"Changes since {since.astimezone(UTC):%Y-%m-%d}",
            f"{len(added)} structures added, {len(removed)} removed",
        )
        top = p.height - p.margin - p.header - 4
        column_w = p.frame[0] / 2
        capacity = int((top - p.margin - p.footer) // 4.2) - 1
        for column, (title, items) in enumerate((("Added", added), ("Removed", removed))):
            x = p.margin + column * column_w
            c.setFont(BOLD_FONT, 10)
            c.drawString(x * mm, top * mm, f"{title} ({len(items)})")
            c.setFont(TEXT_FONT, 8.5)
            shown = items if len(items) <= capacity else items[: capacity - 1]
            for k, s in enumerate(shown):
                text = f"{s.number or '#' + str(s.id)}   {s.use or '-'}"
                c.drawString(x * mm, (top - 5 - 4.2 * k) * mm, text)
            if len(shown) < len(items):
                c.drawString(
                    x * mm,
                    (top - 5 - 4.2 * len(shown)) * mm,
                    f"... and {len(items) - len(shown)} more",
                )

    # -- map pages -------------------------------------------------------------------
    def map_page(self, page: MapPage) -> None:
        p = page.paper
        part = f" ({page.tile})" if page.tile else ""
        about = f"{len(page.structures)} structures · scale 1:{page.scale} on {p.name}"
        if p.landscape:
            about += " landscape"
        if page.block.prefix:
            about += f" · numbers without the prefix {page.block.prefix}-"
        self._start(f"Block {page.block.name}: map{part}", about, p)
        frame_w, frame_h = p.frame
        x_mm, y_mm = self._frame_origin()
        window = (page.x0, page.y0, page.x1, page.y1)
        image = render_window(
            self.layers, window, (frame_w, frame_h), highlight={s.id for s in page.structures}
        )
        c = self.canvas
        c.drawImage(ImageReader(image), x_mm * mm, y_mm * mm, frame_w * mm, frame_h * mm)
        c.setStrokeColor(black)
        c.setLineWidth(0.6)
        c.rect(x_mm * mm, y_mm * mm, frame_w * mm, frame_h * mm)
        self._labels(page, window, (x_mm, y_mm, frame_w, frame_h))
        self._legend(page.scale, x_mm, y_mm)
        self._locate(window)

    def _locate(self, window: tuple[float, float, float, float]) -> None:
        """A key map in the header's right corner: the outline, the page's window in red.

        The outline is drawn once per atlas and placed on every map page, so a page
        that leaves the room still shows where in the settlement it lies.
        """
        c, p = self.canvas, self.paper
        height = LOCATOR_MM
        if self._locator is None:
            minx, miny, maxx, maxy = self.data.boundary.bounds
            width = min(2.5 * height, max(height, height * (maxx - minx) / (maxy - miny or 1)))
            whole = _fit((minx, miny, maxx, maxy), width, height, pad=0.08)
            image = render_window(self.layers, whole, (width, height), key_map=True)
            self._locator = (ImageReader(image), whole, width)
        image, whole, width = self._locator
        x, y = p.width - p.margin - width, p.height - p.margin - height
        c.drawImage(image, x * mm, y * mm, width * mm, height * mm)
        c.setStrokeColor(HexColor("#888888"))
        c.setLineWidth(0.4)
        c.rect(x * mm, y * mm, width * mm, height * mm)
        frame = (x, y, width, height)
        x0, y0 = _to_page(whole, frame, window[0], window[1])
        x1, y1 = _to_page(whole, frame, window[2], window[3])
        x0, y0 = max(x0, x), max(y0, y)
        x1, y1 = min(x1, x + width), min(y1, y + height)
        c.setStrokeColor(HexColor("#c62828"))
        c.setLineWidth(1)
        c.rect(x0 * mm, y0 * mm, max(x1 - x0, 0.8) * mm, max(y1 - y0, 0.8) * mm)

    def _labels(
        self,
        page: MapPage,
        window: tuple[float, float, float, float],
        frame: tuple[float, float, float, float],
    ) -> None:
        c = self.canvas
        placed = self._facility_spots(window, frame)
        height = LABEL_SIZE * 0.8 / mm * 1.0 + 0.6  # cap height + padding, in mm
        for structure in sorted(page.structures, key=lambda s: (-s.y, s.x)):
            text = page.block.label(structure)
            width = stringWidth(text, LABEL_FONT, LABEL_SIZE) / mm + 0.8
            px, py = _to_page(window, frame, structure.x, structure.y)
            best = _place(px, py, width, height, placed, frame)
            cx, cy = best.x + best.w / 2, best.y + best.h / 2
            self._leader(px, py, cx, cy)
            c.setFillColor(_PALE)
            c.rect(best.x * mm, best.y * mm, best.w * mm, best.h * mm, stroke=0, fill=1)
            c.setFillColor(black)
            c.setFont(LABEL_FONT, LABEL_SIZE)
            c.drawCentredString(cx * mm, (best.y + 0.45) * mm, text)

    def _facility_spots(
        self, window: tuple[float, float, float, float], frame: tuple[float, float, float, float]
    ) -> list[_Label]:
        """The boxes (mm) of the facility symbols drawn in ``frame``: labels keep off them."""
        spots = []
        for facility in self.layers.facilities_in(*window):
            point = facility.geom.representative_point()
            px, py = _to_page(window, frame, point.x, point.y)
            spots.append(_Label(px - SYMBOL_MM / 2, py - SYMBOL_MM / 2, SYMBOL_MM, SYMBOL_MM))
        return spots

    def _marker(self, marker: str, colour: Color, x: float, y: float) -> None:
        """A facility symbol as the map draws it (matplotlib marker ``o s ^ v P X D``)."""
        c, r = self.canvas, 1.1
        c.setFillColor(colour)
        c.setStrokeColor(colour)
        if marker == "s":
            c.rect((x - r) * mm, (y - r) * mm, 2 * r * mm, 2 * r * mm, 0, 1)
        elif marker in {"^", "v"}:
            tip = 1 if marker == "^" else -1
            path = c.beginPath()
            path.moveTo((x - r) * mm, (y - tip * r) * mm)
            path.lineTo((x + r) * mm, (y - tip * r) * mm)
            path.lineTo(x * mm, (y + tip * r) * mm)
            path.close()
            c.drawPath(path, stroke=0, fill=1)
        elif marker == "X":
            c.setLineWidth(0.9)
            c.line((x - r) * mm, (y - r) * mm, (x + r) * mm, (y + r) * mm)
            c.line((x - r) * mm, (y + r) * mm, (x + r) * mm, (y - r) * mm)
        elif marker == "D":
            path = c.beginPath()
            path.moveTo(x * mm, (y - r) * mm)
            path.lineTo((x + r) * mm, y * mm)
            path.lineTo(x * mm, (y + r) * mm)
            path.lineTo((x - r) * mm, y * mm)
            path.close()
            c.drawPath(path, stroke=0, fill=1)
        elif marker == "P":
            c.rect((x - r) * mm, (y - r / 3) * mm, 2 * r * mm, 2 * r / 3 * mm, 0, 1)
            c.rect((x - r / 3) * mm, (y - r) * mm, 2 * r / 3 * mm, 2 * r * mm, 0, 1)
        else:
            c.circle(x * mm, y * mm, r * mm, 0, 1)

    def _leader(self, px: float, py: float, cx: float, cy: float) -> None:
        """A thin line from a point to its label's centre when the label was moved off it."""
        if abs(cx - px) > 0.5 or abs(cy - py) > 0.5:
            c = self.canvas
            c.setStrokeColor(HexColor("#333333"))
            c.setLineWidth(0.3)
            c.line(px * mm, py * mm, cx * mm, cy * mm)

    def _halo_text(self, x: float, y: float, text: str, font: str, size: float) -> None:
        c = self.canvas
        width, height = _halo_size(text, font, size)
        c.setFillColor(_PALE)
        c.rect((x - width / 2) * mm, (y - height / 2) * mm, width * mm, height * mm, 0, 1)
        c.setFillColor(black)
        c.setFont(font, size)
        c.drawCentredString(x * mm, (y - height / 2 + 0.55) * mm, text)

    def _legend(self, scale: int, x_mm: float, y_mm: float) -> None:
        c, p = self.canvas, self.paper
        y = y_mm - p.legend + 2.5
        c.setFillColor(black)
        c.setFont(BOLD_FONT, 7)
        c.drawString(x_mm * mm, (y + 0.4) * mm, "Structures")
        x = x_mm + LEGEND_INDENT_MM
        c.setFont(TEXT_FONT, 7)
        for use, colour in USE_COLOURS.items():
            c.setFillColor(HexColor(colour))
            c.setStrokeColor(black)
            c.setLineWidth(0.3)
            c.rect(x * mm, y * mm, 3 * mm, 2.4 * mm, 1, 1)
            c.setFillColor(black)
            label = use.replace("_", " ")
            c.drawString((x + 3.8) * mm, (y + 0.4) * mm, label)
            x += 5.5 + stringWidth(label, TEXT_FONT, 7) / mm
        self._facility_legend(x_mm, y - 3.6)
        self._north_and_scale_bar(y - 3.6, _bar_metres(scale / 1000), scale / 1000)

    def _north_and_scale_bar(self, y_mm: float, metres: int, metres_per_mm: float) -> None:
        """A bar of ``metres`` ending by the right margin, a north arrow before it.

        The bar is two halves, black and white, with ticks at 0, the middle and the
        end labelled above them (``0  50  100 m``).
        """
        c, p = self.canvas, self.paper
        bar = metres / metres_per_mm
        right = p.width - p.margin - 4  # room for the end label and its unit
        left = right - bar
        c.setLineWidth(0.5)
        c.setStrokeColor(black)
        for k, fill in enumerate((black, white)):
            c.setFillColor(fill)
            c.rect((left + k * bar / 2) * mm, y_mm * mm, bar / 2 * mm, 1.2 * mm, 1, 1)
        c.setFillColor(black)
        c.setFont(TEXT_FONT, 7)
        for k, tick in enumerate((0, metres / 2, metres)):
            x = left + k * bar / 2
            c.line(x * mm, (y_mm - 0.6) * mm, x * mm, (y_mm + 1.8) * mm)
            c.drawCentredString(x * mm, (y_mm + 2.3) * mm, f"{tick:,g}")
        end = stringWidth(f"{metres:,g}", TEXT_FONT, 7) / mm
        c.drawString((right + end / 2 + 0.8) * mm, (y_mm + 2.3) * mm, "m")
        c.setFont(BOLD_FONT, 8)
        c.drawRightString((left - 3) * mm, (y_mm + 0.2) * mm, "N ↑")

    def _facility_legend(self, x: float, y: float) -> float:
        """Facility symbols (hollow: broken or needing repair) from ``x``; the x after them."""
        c = self.canvas
        c.setFillColor(black)
        c.setFont(BOLD_FONT, 7)
        c.drawString(x * mm, (y + 0.4) * mm, "Facilities")
        x += LEGEND_INDENT_MM
        c.setFont(TEXT_FONT, 7)
        for kind, (marker, colour) in FACILITY_STYLE.items():
            self._marker(marker, HexColor(colour), x + 1.3, y + 1.2)
            c.setFillColor(black)
            label = kind.replace("_", " ")
            c.drawString((x + 3.2) * mm, (y + 0.4) * mm, label)
            x += 4.6 + stringWidth(label, TEXT_FONT, 7) / mm
        c.drawString(x * mm, (y + 0.4) * mm, "(hollow: broken or needs repair)")
        return x

    # -- verification sheets -----------------------------------------------------------
    def sheet(self, block: Block, rows: list[Structure], part: int, parts: int, first: int) -> None:
        p, c = self.paper, self.canvas
        self._start(
            f"Block {block.name}: verification sheet"
            + (f" ({part} of {parts})" if parts > 1 else ""),
            "Read each row out at the forum; write corrections in the last column",
        )
        top = p.height - p.margin - p.header - 2
        widths: list[float] = [w for _name, w in SHEET_COLUMNS]
        widths[-1] = p.frame[0] - sum(widths)
        xs = [p.margin]
        for w in widths:
            xs.append(xs[-1] + w)
        c.setFillColor(HexColor("#e8e8e8"))
        c.rect(p.margin * mm, (top - ROW_MM) * mm, p.frame[0] * mm, ROW_MM * mm, 0, 1)
        c.setFillColor(black)
        c.setFont(BOLD_FONT, 8.5)
        for (name, _w), x in zip(SHEET_COLUMNS, xs, strict=False):
            c.drawString((x + 1.5) * mm, (top - ROW_MM + 2.5) * mm, name)
        c.setFont(TEXT_FONT, 9)
        for k, s in enumerate(rows):
            y = top - ROW_MM * (k + 2) + 2.5
            cells = [
                str(first + k),
                s.number or f"#{s.id}",
                (s.use or "-").replace("_", " "),
                str(s.households),
                s.review_state.replace("_", " "),
            ]
            for text, x, w in zip(cells, xs, widths, strict=False):
                while stringWidth(text, TEXT_FONT, 9) / mm > w - 2 and len(text) > 2:
                    text = text[:-2] + "…"
                c.drawString((x + 1.5) * mm, y * mm, text)
        bottom = top - ROW_MM * (len(rows) + 1)
        c.setStrokeColor(HexColor("#555555"))
        c.setLineWidth(0.4)
        for k in range(len(rows) + 2):
            yy = top - ROW_MM * k
            c.line(p.margin * mm, yy * mm, (p.margin + p.frame[0]) * mm, yy * mm)
        for x in xs:
            c.line(x * mm, top * mm, x * mm, bottom * mm)
        if part == parts:
            c.setFont(TEXT_FONT, 9)
            c.drawString(
                p.margin * mm,
                (bottom - 9) * mm,
                "Read out on ____________  by ______________________  "
                "agreed by the forum: yes / no",
            )

    def next_page(self) -> None:
        """End the page drawn so far."""
        self.canvas.showPage()


def _halo_size(text: str, font: str, size: float) -> tuple[float, float]:
    """Width and height (mm) of ``text`` on its pale halo."""
    return stringWidth(text, font, size) / mm + 1.2, size * 0.8 / mm + 1.0


def _bar_metres(metres_per_mm: float, longest_mm: float = 30.0) -> int:
    """The longest round length on the ground whose bar is at most ``longest_mm`` long."""
    rounds = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
    return max([m for m in rounds if m / metres_per_mm <= longest_mm], default=rounds[0])


def _fit(
    bounds: tuple[float, float, float, float], width_mm: float, height_mm: float, pad: float
) -> tuple[float, float, float, float]:
    minx, miny, maxx, maxy = bounds
    w, h = (maxx - minx) * (1 + 2 * pad) or 50.0, (maxy - miny) * (1 + 2 * pad) or 50.0
    per_mm = max(w / width_mm, h / height_mm)
    cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
    return (
        cx - width_mm * per_mm / 2,
        cy - height_mm * per_mm / 2,
        cx + width_mm * per_mm / 2,
        cy + height_mm * per_mm / 2,
    )


def _to_page(
    window: tuple[float, float, float, float],
    frame: tuple[float, float, float, float],
    x: float,
    y: float,
) -> tuple[float, float]:
    x0, y0, x1, y1 = window
    fx, fy, fw, fh = frame
    return fx + (x - x0) / (x1 - x0) * fw, fy + (y - y0) / (y1 - y0) * fh


def write_atlas(
    out: IO[bytes],
    *,
    data: AtlasData,
    profile: dict[str, Any],
    request: AtlasRequest,
    timeout_s: float,
    before: AtlasData | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write the atlas PDF to ``out``; the number of pages.

    ``before`` (the layers at ``request.since``) adds the change page.

    Raises
    ------
    geo.core.errors.Unavailable
        When drawing takes longer than ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    atlas = _Atlas(out, data, profile, request, deadline, timeout_s)
    paper = PAPER[request.paper]
    blocks = plan_blocks(data, paper)
    rows_per_sheet = sheet_rows(paper)
    plan: list[tuple[Block, list[MapPage], int]] = [
        (block, plan_pages(block, paper), math.ceil(len(block.structures) / rows_per_sheet))
        for block in blocks
    ]
    atlas.pages = 1 + (before is not None) + sum(len(m) + s for _b, m, s in plan)
    atlas.cover(blocks)
    if before is not None and request.since is not None:
        atlas.next_page()
        now_ids = {s.id for s in data.structures}
        then_ids = {s.id for s in before.structures}
        atlas.changes(
            [s for s in data.structures if s.id not in then_ids],
            [s for s in before.structures if s.id not in now_ids],
            request.since,
        )
    for block, map_pages, sheets in plan:
        for page in map_pages:
            atlas.next_page()
            atlas.map_page(page)
            if progress:
                progress(atlas.page, atlas.pages)
        for part in range(sheets):
            atlas.next_page()
            first = part * rows_per_sheet
            chunk = block.structures[first : first + rows_per_sheet]
            atlas.sheet(block, chunk, part + 1, sheets, first + 1)
    atlas.next_page()
    atlas.canvas.save()
    return atlas.pages
