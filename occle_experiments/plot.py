"""Line charts with error bars drawn with PIL (no matplotlib dependency): label curves and learning curves."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PALETTE = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75))
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
    fx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
    xs = [fx(x) for x, _, _ in pts]
    y_lo = min(min(y - e for _, y, e in pts), 0.0)
    yt = _ticks(y_lo, max(y + e for _, y, e in pts))
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    pad = 0.04 * (x_hi - x_lo)
    x_lo, x_hi = x_lo - pad, x_hi + pad
    w, h = SIZE
    left, top, right, bottom = MARGIN
    pw, ph = w - left - right, h - top - bottom

    def px(x: float, y: float) -> tuple[float, float]:
        return left + (fx(x) - x_lo) / (x_hi - x_lo) * pw, top + (yt[-1] - y) / (yt[-1] - yt[0]) * ph

    img = Image.new("RGB", SIZE, "white")
    d = ImageDraw.Draw(img)
    font = _font()
    for y in yt:
        yy = top + (yt[-1] - y) / (yt[-1] - yt[0]) * ph
        d.line([left, yy, left + pw, yy], fill=(225, 225, 225))
        d.text((left - 6, yy), f"{y:g}", fill=(0, 0, 0), font=font, anchor="rm")
    d.rectangle([left, top, left + pw, top + ph], outline=(0, 0, 0))
    x_ticks = sorted({x for x, _, _ in pts})
    for x in x_ticks if len(x_ticks) <= 12 else _ticks(x_ticks[0], x_ticks[-1]):
        xx, _ = px(x, yt[0])
        d.line([xx, top + ph, xx, top + ph + 4], fill=(0, 0, 0))
        d.text((xx, top + ph + 6), f"{x:g}", fill=(0, 0, 0), font=font, anchor="mt")
    for x in x_marks or []:
        xx, _ = px(x, yt[0])
        for y0 in range(top, top + ph, 8):
            d.line([xx, y0, xx, min(y0 + 4, top + ph)], fill=(120, 120, 120))
    d.text((left + pw / 2, h - 8), x_label, fill=(0, 0, 0), font=font, anchor="ms")
    d.text((left + pw / 2, 4), title, fill=(0, 0, 0), font=font, anchor="mt")
    label = Image.new("RGB", (ph, 20), "white")
    ImageDraw.Draw(label).text((ph / 2, 10), y_label, fill=(0, 0, 0), font=font, anchor="mm")
    img.paste(label.rotate(90, expand=True), (4, top))
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        xy = [px(x, y) for x, y, _ in sorted(s.points)]
        if len(xy) > 1:
            d.line(xy, fill=color, width=2)
        for (x, y, e), (xx, yy) in zip(sorted(s.points), xy):
            if e > 0:
                _, y0 = px(x, y - e)
                _, y1 = px(x, y + e)
                d.line([xx, y0, xx, y1], fill=color, width=1)
                d.line([xx - 4, y0, xx + 4, y0], fill=color)
                d.line([xx - 4, y1, xx + 4, y1], fill=color)
            d.ellipse([xx - 3, yy - 3, xx + 3, yy + 3], fill=color)
        d.rectangle([left + 10, top + 10 + 18 * i, left + 22, top + 22 + 18 * i], fill=color)
        d.text((left + 28, top + 16 + 18 * i), s.name, fill=(0, 0, 0), font=font, anchor="lm")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
