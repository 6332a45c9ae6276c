"""Two small PIL drawings (matplotlib is not a dependency): a sample grid and a line chart."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from demo.data import CLASS_NAMES


def sample_grid(npz_path: Path, png_path: Path, per_row: int = 10, zoom: int = 3, num_classes: int = 10) -> None:
    """One row per class (the first ``per_row`` samples of that class), class names on the left."""
    with np.load(npz_path) as d:
        images, labels = d["arr_0"], d["arr_1"]
    H, W = images.shape[1:3]
    font = ImageFont.load_default()
    label_w, pad = 80, 2
    canvas = Image.new("RGB", (label_w + per_row * (W * zoom + pad), num_classes * (H * zoom + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for c in range(num_classes):
        top = c * (H * zoom + pad)
        draw.text((4, top + H * zoom // 2 - 5), CLASS_NAMES[c], fill="black", font=font)
        for j, i in enumerate(np.flatnonzero(labels == c)[:per_row]):
            tile = Image.fromarray(images[i]).resize((W * zoom, H * zoom), Image.NEAREST)
            canvas.paste(tile, (label_w + j * (W * zoom + pad), top))
    canvas.save(png_path)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** np.floor(np.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = np.ceil(lo / step) * step
    return [float(v) + 0.0 if abs(v) > step * 1e-9 else 0.0 for v in np.arange(start, hi + step * 1e-6, step)]


def line_panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str, xlabel: str,
               series: list[dict], points: list[dict]) -> None:
    """series: {'x', 'y', 'color', 'label'} polylines with dots; points: {'x', 'y', 'color', 'label'} markers."""
    font = ImageFont.load_default()
    x0, y0, x1, y1 = box
    left, bottom = x0 + 50, y1 - 40
    right, top = x1 - 10, y0 + 25
    xs = [x for s in series for x in s["x"]] + [p["x"] for p in points]
    ys = [y for s in series for y in s["y"]] + [p["y"] for p in points]
    xlo, xhi = min(xs), max(xs)
    ylo, yhi = min(ys), max(ys)
    xm, ym = (xhi - xlo) * 0.08 or 0.5, (yhi - ylo) * 0.12 or 0.5
    xlo, xhi, ylo, yhi = xlo - xm, xhi + xm, ylo - ym, yhi + ym

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - xlo) / (xhi - xlo) * (right - left), bottom - (y - ylo) / (yhi - ylo) * (bottom - top))

    draw.text((left, y0 + 5), title, fill="black", font=font)
    draw.rectangle([left, top, right, bottom], outline="black")
    for t in _nice_ticks(ylo, yhi):
        _, yy = px(xlo, t)
        draw.line([left - 4, yy, left, yy], fill="black")
        draw.line([left, yy, right, yy], fill=(230, 230, 230))
        draw.text((x0 + 2, yy - 6), f"{t:g}", fill="black", font=font)
    for t in _nice_ticks(xlo, xhi):
        xx, _ = px(t, ylo)
        draw.line([xx, bottom, xx, bottom + 4], fill="black")
        draw.text((xx - 8, bottom + 6), f"{t:g}", fill="black", font=font)
    draw.text(((left + right) // 2 - 40, bottom + 22), xlabel, fill="black", font=font)
    legend_y = top + 5
    for s in series:
        pts = [px(x, y) for x, y in zip(s["x"], s["y"])]
        if len(pts) > 1:
            draw.line(pts, fill=s["color"], width=2)
        for (a, b) in pts:
            draw.ellipse([a - 3, b - 3, a + 3, b + 3], fill=s["color"])
        draw.text((right - 150, legend_y), s["label"], fill=s["color"], font=font)
        legend_y += 12
    for p in points:
        a, b = px(p["x"], p["y"])
        draw.polygon([(a, b - 7), (a + 7, b), (a, b + 7), (a - 7, b)], fill=p["color"], outline="black")
        draw.text((right - 150, legend_y), p["label"], fill=p["color"], font=font)
        legend_y += 12


def guidance_plot(png_path: Path, family: str, cfg_label: str, curve: list[tuple[float, float, float]],
                  cca_point: tuple[float, float, float]) -> None:
    """curve: (scale, fid, accuracy) of the base model from guidance-free up; cca_point: (scale, fid, accuracy)."""
    img = Image.new("RGB", (820, 320), "white")
    draw = ImageDraw.Draw(img)
    xs = [c[0] for c in curve]
    for i, (metric, col) in enumerate((("classifier-FID (lower is better)", 1), ("accuracy (higher is better)", 2))):
        line_panel(draw, (i * 410, 0, (i + 1) * 410, 320), f"{family}: {metric}", cfg_label,
                   [{"x": xs, "y": [c[col] for c in curve], "color": (31, 119, 180), "label": "base (+CFG)"}],
                   [{"x": cca_point[0], "y": cca_point[col], "color": (214, 39, 40),
                     "label": "CCA, guidance-free"}])
    img.save(png_path)
