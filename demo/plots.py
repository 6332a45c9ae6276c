"""Two small PIL drawings (matplotlib is not a dependency): a sample grid and the guidance plot (its line
chart is evaluations.plots.line_panel)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from demo.data import CLASS_NAMES
from evaluations.plots import PALETTE, line_panel, text_font


def sample_grid(npz_path: Path, png_path: Path, per_row: int = 10, zoom: int = 3, num_classes: int = 10) -> None:
    """One row per class (the first ``per_row`` samples of that class), class names on the left."""
    with np.load(npz_path) as d:
        images, labels = d["arr_0"], d["arr_1"]
    H, W = images.shape[1:3]
    font = text_font()
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


CURVE_PANEL = (480, 360)                 # width, height of one network's panel in curves_<family>.png


def curve_series(curve: dict, net: str) -> list[dict]:
    """The two polylines of one network's panel (x accuracy, y classifier-FID), each point labelled with its
    CFG scale or lambda; ``curve`` as ``demo.curves.family_curve`` returns it."""
    def series(points: list[dict], setting: str, color, label: str) -> dict:
        return {"x": [p["scores"][net]["accuracy"] for p in points], "y": [p["scores"][net]["fid"] for p in points],
                "texts": [f"{p[setting]:g}" for p in points], "color": color, "label": label}
    return [series(curve["cfg"], "cfg", PALETTE[0], "base + CFG (by scale)"),
            series(curve["cca"], "lambda", PALETTE[1], "CCA, no guidance (by lambda)")]


def curve_plot(png_path: Path, family: str, curve: dict, nets: list[str]) -> Path:
    """One panel per feature network: classifier-FID against accuracy along the CFG scales and the lambdas."""
    W, H = CURVE_PANEL
    img = Image.new("RGB", (W * len(nets), H), "white")
    draw = ImageDraw.Draw(img)
    for i, net in enumerate(nets):
        line_panel(draw, (i * W, 0, (i + 1) * W, H), f"{family} ({net}): classifier-FID against accuracy",
                   "accuracy (higher is better)", curve_series(curve, net), [], ylabel="FID (lower is better)")
    img.save(png_path)
    return Path(png_path)
