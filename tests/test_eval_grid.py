"""evaluations/grid.py: one row per class, several files side by side, checked tile by tile on images whose colour
encodes (file, class, rank); plus the shared line chart's axis mapping and ticks."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from evaluations import grid, plots
from fixture_utils import REPO

H = W = 8


def colour(file: int, cls: int, rank: int) -> tuple[int, int, int]:
    return (40 + 100 * file, 10 + 20 * cls, 30 + 40 * rank)


def make_npz(path, file: int, counts: dict[int, int], seed: int) -> None:
    """Shuffled samples; the k-th sample of class c (file order) is a flat tile of colour(file, c, k)."""
    labels = np.random.default_rng(seed).permutation(np.repeat(list(counts), list(counts.values())))
    seen: dict[int, int] = {}
    images = np.zeros((len(labels), H, W, 3), np.uint8)
    for i, c in enumerate(labels):
        images[i] = colour(file, int(c), seen.setdefault(int(c), 0))
        seen[int(c)] += 1
    np.savez(path, images, labels)


def tile(img: Image.Image, row: int, col: int) -> tuple[int, int, int]:
    """Colour at the centre of tile (row, col) of a make_grid image (padding 2)."""
    step = H + grid.PADDING
    return img.getpixel((grid.PADDING + col * step + W // 2, grid.PADDING + row * step + H // 2))


def test_rows_are_classes_files_side_by_side(tmp_path, capsys):
    make_npz(tmp_path / "a.npz", 0, {0: 3, 1: 3, 2: 3, 5: 3}, seed=0)
    make_npz(tmp_path / "b.npz", 1, {0: 3, 2: 1, 5: 3}, seed=1)       # class 2 short, class 1 absent
    out = grid.main([str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--classes", "5,2,1", "--per-class", "2",
                     "--out", str(tmp_path / "g.png")])
    img = Image.open(out).convert("RGB")
    cols, rows = 2 * 2 + 1, 3                                          # two blocks of 2 and a blank separator
    assert img.size == (cols * (W + 2) + 2, rows * (H + 2) + 2)
    white = (255, 255, 255)
    for r, cls in enumerate((5, 2, 1)):
        assert [tile(img, r, j) for j in range(2)] == [colour(0, cls, 0), colour(0, cls, 1)]
        assert tile(img, r, 2) == white                                 # separator
    assert [tile(img, 0, j) for j in (3, 4)] == [colour(1, 5, 0), colour(1, 5, 1)]
    assert [tile(img, 1, j) for j in (3, 4)] == [colour(1, 2, 0), white]   # one sample of class 2 in b
    assert [tile(img, 2, j) for j in (3, 4)] == [white, white]             # class 1 absent from b
    printed = capsys.readouterr()
    assert "b.npz: fewer than 2 samples of class(es) [2, 1]" in printed.err
    assert f"columns 1-2: {tmp_path / 'a.npz'}; 4-5: {tmp_path / 'b.npz'})" in printed.out


def test_default_output_name_and_bad_input(tmp_path):
    make_npz(tmp_path / "a.npz", 0, {0: 2, 1: 2}, seed=0)
    proc = subprocess.run([sys.executable, "evaluations/grid.py", str(tmp_path / "a.npz"), "--classes", "0,1",
                           "--per-class", "1"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "a.grid.png").size == (1 * (W + 2) + 2, 2 * (H + 2) + 2)
    np.savez(tmp_path / "nolabels.npz", np.zeros((2, H, W, 3), np.uint8))
    np.savez(tmp_path / "big.npz", np.zeros((2, 16, 16, 3), np.uint8), np.array([0, 1]))
    for argv, expected in ((["a.npz"], "no samples of class(es) [88, 130"),     # the ImageNet default spread
                           (["nolabels.npz"], "no arr_1 labels"),
                           (["a.npz", "big.npz", "--classes", "0"], "a grid needs one size"),
                           (["a.npz", "--classes", "x"], "--classes: expected comma-separated integers")):
        with pytest.raises(SystemExit) as err:
            grid.main([str(tmp_path / argv[0]), *[str(tmp_path / a) if a.endswith(".npz") else a
                                                  for a in argv[1:]]])
        assert expected in str(err.value) and "\n" not in str(err.value)


def test_chart_maps_data_to_the_documented_pixels(tmp_path):
    series = [{"x": [0.0, 10.0], "y": [5.0, 1.0], "color": plots.PALETTE[0], "label": "a", "rings": [1]}]
    path = plots.chart(tmp_path / "c.png", "t", "x", "y", series, size=(400, 300))
    img = Image.open(path).convert("RGB")
    px, (xlo, xhi, ylo, yhi) = plots.panel_mapping((0, 0, 400, 300), series, [])
    assert xlo < 0 < 10 < xhi and ylo < 1 < 5 < yhi
    for x, y in zip(series[0]["x"], series[0]["y"]):
        assert img.getpixel(tuple(round(v) for v in px(x, y))) == plots.PALETTE[0]
    assert plots.nice_ticks(0, 1) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    canvas = Image.new("RGB", (400, 300), "white")          # demo-style panel with a diamond marker
    plots.line_panel(ImageDraw.Draw(canvas), (0, 0, 400, 300), "t", "x", series,
                     [{"x": 5.0, "y": 3.0, "color": (1, 2, 3), "label": "p"}])
    px, _ = plots.panel_mapping((0, 0, 400, 300), series, [{"x": 5.0, "y": 3.0}])
    assert canvas.getpixel(tuple(round(v) for v in px(5.0, 3.0))) == (1, 2, 3)
