"""Charts drawn with PIL (no matplotlib dependency): line charts with error bars (label curves, learning curves)
and scatter charts with target lines (trade-offs)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PALETTE = (
    (31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip
SIZE = (720, 440)
MARGIN = (70, 20, 20, 60)  # left, top, right, bottom (pixels)


@dataclass
class Series:
    """One line: points ``(x, y, err)`` (``err`` = half-length of the error bar, 0 for none)."""

    name: str
    points: list[tuple[float, float, float]] = field(default_factory=list)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    first = math.floor(lo / step) * step
    return [first + i * step for i in range(int(math.ceil((hi - first) / step)) + 1)]


class _Canvas:
    """A white PNG canvas with a framed plot area, grid lines and ticks: data coordinates -> pixels."""

    def __init__(self, x_range: tuple[float, float], y_ticks: list[float], x_ticks: list[float], title: str,
                 x_label: str, y_label: str, fx: Callable[[float], float] = float) -> None:  # fmt: skip
        self.fx, self.x_lo, self.x_hi, self.yt = fx, *x_range, y_ticks
        w, h = SIZE
        self.left, self.top, right, bottom = MARGIN
        self.pw, self.ph = w - self.left - right, h - self.top - bottom
        self.img = Image.new("RGB", SIZE, "white")
        self.draw = d = ImageDraw.Draw(self.img)
        self.font = font = _font()
        left, top, pw, ph = self.left, self.top, self.pw, self.ph
        for y in y_ticks:
            yy = self.y_px(y)
            d.line([left, yy, left + pw, yy], fill=(225, 225, 225))
            d.text((left - 6, yy), f"{y:g}", fill=(0, 0, 0), font=font, anchor="rm")
        d.rectangle([left, top, left + pw, top + ph], outline=(0, 0, 0))
        for x in x_ticks:
            xx = self.x_px(x)
            d.line([xx, top + ph, xx, top + ph + 4], fill=(0, 0, 0))
            d.text((xx, top + ph + 6), f"{x:g}", fill=(0, 0, 0), font=font, anchor="mt")
        d.text((left + pw / 2, h - 8), x_label, fill=(0, 0, 0), font=font, anchor="ms")
        d.text((left + pw / 2, 4), title, fill=(0, 0, 0), font=font, anchor="mt")
        label = Image.new("RGB", (ph, 20), "white")
        ImageDraw.Draw(label).text((ph / 2, 10), y_label, fill=(0, 0, 0), font=font, anchor="mm")
        self.img.paste(label.rotate(90, expand=True), (4, top))

    def x_px(self, x: float) -> float:
        """Pixel column of data x."""
        return self.left + (self.fx(x) - self.x_lo) / (self.x_hi - self.x_lo) * self.pw

    def y_px(self, y: float) -> float:
        """Pixel row of data y."""
        return self.top + (self.yt[-1] - y) / (self.yt[-1] - self.yt[0]) * self.ph

    def px(self, x: float, y: float) -> tuple[float, float]:
        """Pixel of data point (x, y)."""
        return self.x_px(x), self.y_px(y)

    def dashed_x(self, x: float) -> None:
        """A dashed vertical line at data x."""
        xx = self.x_px(x)
        for y0 in range(self.top, self.top + self.ph, 8):
            self.draw.line([xx, y0, xx, min(y0 + 4, self.top + self.ph)], fill=(120, 120, 120))

    def dashed_y(self, y: float) -> None:
        """A dashed horizontal line at data y."""
        yy = self.y_px(y)
        for x0 in range(self.left, self.left + self.pw, 8):
            self.draw.line([x0, yy, min(x0 + 4, self.left + self.pw), yy], fill=(120, 120, 120))

    def legend_box(self, series: list[Series], corner: str = "tl") -> tuple[int, int, int, int]:
        """The pixel box (left, top, right, bottom) the legend of ``series`` takes in a ``corner`` of the plot area:
        ``tl``, ``tr``, ``bl`` or ``br``."""
        w = max(int(self.draw.textlength(s.name, font=self.font)) for s in series) + 40
        h = 18 * len(series) + 14
        left = self.left if corner[1] == "l" else self.left + self.pw - w
        top = self.top if corner[0] == "t" else self.top + self.ph - h
        return left, top, left + w, top + h

    def legend(self, series: list[Series], corner: str = "tl") -> None:
        """One entry per series, in its palette colour, in a ``corner`` of the plot area (:meth:`legend_box`)."""
        left, top = self.legend_box(series, corner)[:2]
        for i, s in enumerate(series):
            color = PALETTE[i % len(PALETTE)]
            self.draw.rectangle([left + 10, top + 10 + 18 * i, left + 22, top + 22 + 18 * i], fill=color)
            self.draw.text((left + 28, top + 16 + 18 * i), s.name, fill=(0, 0, 0), font=self.font, anchor="lm")

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.img.save(path)
        return path


def _padded(lo: float, hi: float) -> tuple[float, float]:
    if hi == lo:
        lo, hi = lo - 1, hi + 1
    pad = 0.04 * (hi - lo)
    return lo - pad, hi + pad


def line_chart(
    series: list[Series],
    path: str | Path,
    title: str,
    x_label: str,
    y_label: str,
    log_x: bool = False,
    x_marks: list[float] | None = None,
) -> Path:
    """Draw ``series`` as lines with points and error bars into a PNG.

    Args:
        series: the lines (at least one point in all).
        path: output PNG.
        title / x_label / y_label: texts.
        log_x: logarithmic x axis (label shares 1 ... 100 %); x values must then be > 0.
        x_marks: x positions of dashed vertical marks (e.g. the schedule S).

    Returns:
        ``path``.
    """
    pts = [p for s in series for p in s.points]
    if not pts:
        raise ValueError(f"line_chart {title!r}: no points to draw")
    fx = math.log10 if log_x else float
    xs = [fx(x) for x, _, _ in pts]
    y_lo = min(min(y - e for _, y, e in pts), 0.0)
    yt = _ticks(y_lo, max(y + e for _, y, e in pts))
    x_ticks = sorted({x for x, _, _ in pts})
    if len(x_ticks) > 12:
        x_ticks = _ticks(x_ticks[0], x_ticks[-1])
    c = _Canvas(_padded(min(xs), max(xs)), yt, x_ticks, title, x_label, y_label, fx)
    for x in x_marks or []:
        c.dashed_x(x)
    d = c.draw
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        xy = [c.px(x, y) for x, y, _ in sorted(s.points)]
        if len(xy) > 1:
            d.line(xy, fill=color, width=2)
        for (_, y, e), (xx, yy) in zip(sorted(s.points), xy):
            if e > 0:
                y0, y1 = c.y_px(y - e), c.y_px(y + e)
                d.line([xx, y0, xx, y1], fill=color, width=1)
                d.line([xx - 4, y0, xx + 4, y0], fill=color)
                d.line([xx - 4, y1, xx + 4, y1], fill=color)
            d.ellipse([xx - 3, yy - 3, xx + 3, yy + 3], fill=color)
    c.legend(series)
    return c.save(path)


def scatter_chart(
    groups: list[Series],
    path: str | Path,
    title: str,
    x_label: str,
    y_label: str,
    x_target: float | None = None,
    y_target: float | None = None,
) -> Path:
    """Draw each group's points (``(x, y, _)``, no lines) in its colour, with dashed target lines, into a PNG.

    Args:
        groups: the point sets (at least one point in all); the third value of a point is ignored.
        x_target / y_target: dashed lines at these values (e.g. the targets a run must pass).

    Returns:
        ``path``.
    """
    pts = [p for s in groups for p in s.points]
    if not pts:
        raise ValueError(f"scatter_chart {title!r}: no points to draw")
    xs = [x for x, _, _ in pts] + ([x_target] if x_target is not None else [])
    ys = [y for _, y, _ in pts] + ([y_target] if y_target is not None else [])
    xt = _ticks(*_padded(min(xs), max(xs)))
    c = _Canvas((xt[0], xt[-1]), _ticks(*_padded(min(ys), max(ys))), xt, title, x_label, y_label)
    if x_target is not None:
        c.dashed_x(x_target)
    if y_target is not None:
        c.dashed_y(y_target)
    dots = []
    for i, s in enumerate(groups):
        color = PALETTE[i % len(PALETTE)]
        for x, y, _ in s.points:
            xx, yy = c.px(x, y)
            c.draw.ellipse([xx - 4, yy - 4, xx + 4, yy + 4], fill=color)
            dots.append((xx, yy))

    def covered(corner: str) -> int:
        left, top, right, bottom = c.legend_box(groups, corner)
        return sum(left - 4 <= xx <= right + 4 and top - 4 <= yy <= bottom + 4 for xx, yy in dots)

    c.legend(groups, min(("tr", "tl", "br", "bl"), key=covered))  # the corner that hides the fewest points
    return c.save(path)
