"""Line charts drawn with PIL alone (matplotlib is not a dependency): one panel with axes, ticks, polylines with
dots, optional ringed points and text labels, and diamond markers; used by cca.sweep (FID against IS) and the
demo (classifier-FID / accuracy against guidance scale)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75),
           (227, 119, 194), (23, 190, 207))
RING_RADIUS = 6           # ring around a series point listed in its "rings": 2 px wide, at radius 5-6


def text_font() -> ImageFont.ImageFont:
    """PIL's bitmap font (6 px per character): Pillow >= 10.1's default FreeType font at its 10 px size draws a
    space 2 px wide, so "FID against IS" reads "FIDagainst IS"."""
    return getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)()


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** np.floor(np.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = np.ceil(lo / step) * step
    return [float(v) + 0.0 if abs(v) > step * 1e-9 else 0.0 for v in np.arange(start, hi + step * 1e-6, step)]


def panel_mapping(box: tuple[int, int, int, int], series: list[dict], points: list[dict]
                  ) -> tuple[Callable[[float, float], tuple[float, float]], tuple[float, float, float, float]]:
    """(data -> pixel function, padded data range (xlo, xhi, ylo, yhi)) of a panel drawn by ``line_panel``."""
    x0, y0, x1, y1 = box
    left, bottom, right, top = x0 + 50, y1 - 40, x1 - 10, y0 + 25
    xs = [x for s in series for x in s["x"]] + [p["x"] for p in points]
    ys = [y for s in series for y in s["y"]] + [p["y"] for p in points]
    xlo, xhi, ylo, yhi = min(xs), max(xs), min(ys), max(ys)
    xm, ym = (xhi - xlo) * 0.08 or 0.5, (yhi - ylo) * 0.12 or 0.5
    xlo, xhi, ylo, yhi = xlo - xm, xhi + xm, ylo - ym, yhi + ym

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - xlo) / (xhi - xlo) * (right - left), bottom - (y - ylo) / (yhi - ylo) * (bottom - top))

    return px, (xlo, xhi, ylo, yhi)


def _axes(draw: ImageDraw.ImageDraw, box, px, limits, title: str, xlabel: str, ylabel: str) -> None:
    font = text_font()
    x0, y0 = box[:2]
    xlo, xhi, ylo, yhi = limits
    (left, bottom), (right, top) = px(xlo, ylo), px(xhi, yhi)
    draw.text((left, y0 + 5), title, fill="black", font=font)
    draw.rectangle([left, top, right, bottom], outline="black")
    for t in nice_ticks(ylo, yhi):
        _, yy = px(xlo, t)
        draw.line([left - 4, yy, left, yy], fill="black")
        draw.line([left, yy, right, yy], fill=(230, 230, 230))
        draw.text((x0 + 2, yy - 6), f"{t:g}", fill="black", font=font)
    for t in nice_ticks(xlo, xhi):
        xx, _ = px(t, ylo)
        draw.line([xx, bottom, xx, bottom + 4], fill="black")
        draw.text((xx - 8, bottom + 6), f"{t:g}", fill="black", font=font)
    draw.text(((left + right) // 2 - 40, bottom + 22), xlabel, fill="black", font=font)
    if ylabel:
        draw.text((left + 4, top + 2), ylabel, fill="black", font=font)


def line_panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str, xlabel: str,
               series: list[dict], points: list[dict], ylabel: str = "") -> None:
    """series: {'x', 'y', 'color', 'label'} polylines with dots, optionally 'rings' (indices of points to ring in
    black) and 'texts' (a short text beside each point); points: {'x', 'y', 'color', 'label'} diamond markers."""
    font = text_font()
    px, limits = panel_mapping(box, series, points)
    _axes(draw, box, px, limits, title, xlabel, ylabel)
    right, top = px(limits[1], limits[3])
    legend_y = top + 5
    legend_x = right - 6 - max((draw.textlength(e["label"], font=font) for e in [*series, *points]), default=0)
    for s in series:
        pts = [px(x, y) for x, y in zip(s["x"], s["y"])]
        if len(pts) > 1:
            draw.line(pts, fill=s["color"], width=2)
        for i, (a, b) in enumerate(pts):
            if i in s.get("rings", ()):          # on whole pixels: the ring is symmetric about the point
                ra, rb, r = round(a), round(b), RING_RADIUS
                draw.ellipse([ra - r, rb - r, ra + r, rb + r], outline="black", width=2)
            draw.ellipse([a - 3, b - 3, a + 3, b + 3], fill=s["color"])
            if s.get("texts"):
                draw.text((a + 5, b + 3), s["texts"][i], fill=s["color"], font=font)
        draw.text((legend_x, legend_y), s["label"], fill=s["color"], font=font)
        legend_y += 12
    for p in points:
        a, b = px(p["x"], p["y"])
        draw.polygon([(a, b - 7), (a + 7, b), (a, b + 7), (a - 7, b)], fill=p["color"], outline="black")
        draw.text((legend_x, legend_y), p["label"], fill=p["color"], font=font)
        legend_y += 12


def chart(png_path: str | Path, title: str, xlabel: str, ylabel: str, series: list[dict],
          size: tuple[int, int] = (640, 480), note: str = "") -> Path:
    """One panel on a white canvas of ``size``, saved as PNG; ``note`` goes under the x-axis label."""
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    line_panel(draw, (0, 0, size[0], size[1] - (14 if note else 0)), title, xlabel, series, [], ylabel)
    if note:
        draw.text((8, size[1] - 13), note, fill="black", font=text_font())
    img.save(png_path)
    return Path(png_path)
