"""Sample grids: one row per class, several sample files side by side.

    python evaluations/grid.py SAMPLES.npz [MORE.npz ...] [--classes 1,88,207] [--per-class 4] [--out grid.png]

Each row holds, for every file in the order given, the first ``--per-class`` samples of that class (file order;
the samplers write shuffled files), the files' blocks separated by one blank tile. Only the images up to the last
one needed are read from each file. Drawn with torchvision's ``make_grid`` / ``save_image``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root on sys.path instead of this folder
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
import torch  # noqa: E402

from evaluations import npz_io  # noqa: E402

# A spread of ImageNet classes: goldfish, macaw, flamingo, golden retriever, Arctic fox, lion, giant panda,
# balloon, cheeseburger, volcano.
DEFAULT_CLASSES = (1, 88, 130, 207, 279, 291, 388, 417, 933, 980)
PADDING = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluations/grid.py", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("samples", nargs="+", help="sample .npz files (arr_0 uint8 images, arr_1 labels)")
    p.add_argument("--classes", default=",".join(map(str, DEFAULT_CLASSES)),
                   help="comma-separated class ids, one grid row each (default: a spread of ImageNet classes)")
    p.add_argument("--per-class", type=int, default=4, help="samples of each class from each file")
    p.add_argument("--out", help="output PNG (default: <first file>.grid.png)")
    return p


def parse_classes(text: str) -> list[int]:
    try:
        classes = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise npz_io.InputError(f"--classes: expected comma-separated integers, got {text!r}") from None
    if not classes or min(classes) < 0:
        raise npz_io.InputError(f"--classes: expected non-negative class ids, got {text!r}")
    return classes


def pick(labels: np.ndarray, classes: list[int], per_class: int) -> list[list[int]]:
    """For each class, the file indices of its first ``per_class`` samples (fewer when the file has fewer)."""
    return [np.flatnonzero(labels == c)[:per_class].tolist() for c in classes]


def read_tiles(path: Path, classes: list[int], per_class: int) -> tuple[list[list[np.ndarray]], tuple[int, ...]]:
    """Per class, the chosen images (H, W, C) of one file; reads the file only up to the last chosen image."""
    info = npz_io.inspect_images(path)
    labels = npz_io.read_labels(path)
    if labels is None:
        raise npz_io.InputError(f"{path}: no arr_1 labels; grids need the class of every sample")
    chosen = pick(np.asarray(labels), classes, per_class)
    wanted = {i for idx in chosen for i in idx}
    images, start = {}, 0
    for batch in npz_io.iter_image_batches(info, 256, limit=max(wanted, default=-1) + 1):
        for j in range(len(batch)):
            if start + j in wanted:
                images[start + j] = batch[j]
        start += len(batch)
    return [[images[i] for i in idx] for idx in chosen], info.shape[1:]


def grid_tensor(blocks: list[list[list[np.ndarray]]], shape: tuple[int, ...], per_class: int) -> torch.Tensor:
    """(rows * cols, C, H, W) floats in [0, 1]: row r = class r, every file's block of ``per_class`` tiles, a blank
    tile between blocks; missing samples stay blank (white)."""
    H, W, C = shape
    cols = len(blocks) * per_class + len(blocks) - 1
    tiles = torch.ones(len(blocks[0]), cols, C, H, W)
    for f, per_file in enumerate(blocks):
        for r, images in enumerate(per_file):
            for j, img in enumerate(images):
                tiles[r, f * (per_class + 1) + j] = torch.tensor(img).permute(2, 0, 1) / 255
    return tiles.flatten(0, 1)


def write_grid(samples: list[Path], classes: list[int], per_class: int, out: Path) -> Path:
    from torchvision.utils import make_grid, save_image
    read = [read_tiles(Path(s), classes, per_class) for s in samples]
    shape = read[0][1]
    for s, (_, other) in zip(samples, read):
        if other != shape:
            raise npz_io.InputError(f"{s}: images are {other}, {samples[0]} has {shape}; a grid needs one size")
    counts = [sum(len(per_file[r]) for per_file, _ in read) for r in range(len(classes))]
    absent = [c for c, n in zip(classes, counts) if n == 0]
    if absent:
        raise npz_io.InputError(f"--classes: no samples of class(es) {absent} in any file")
    for s, (per_file, _) in zip(samples, read):
        short = [c for c, imgs in zip(classes, per_file) if len(imgs) < per_class]
        if short:
            print(f"warning: {s}: fewer than {per_class} samples of class(es) {short}; their tiles stay blank",
                  file=sys.stderr)
    tiles = grid_tensor([per_file for per_file, _ in read], shape, per_class)
    cols = len(samples) * per_class + len(samples) - 1
    save_image(make_grid(tiles, nrow=cols, padding=PADDING, pad_value=1.0), out)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.per_class < 1:
        parser.error(f"--per-class must be >= 1, got {args.per_class}")
    out = Path(args.out) if args.out else Path(args.samples[0]).with_suffix(".grid.png")
    try:
        path = write_grid([Path(s) for s in args.samples], parse_classes(args.classes), args.per_class, out)
    except npz_io.InputError as e:
        raise SystemExit(f"grid.py: error: {e}") from None
    blocks = [f"{1 + i * (args.per_class + 1)}-{(i + 1) * (args.per_class + 1) - 1}: {s}"
              for i, s in enumerate(args.samples)]
    print(f"wrote {path} (rows: classes {args.classes}; columns {'; '.join(blocks)})")
    return path


if __name__ == "__main__":
    main()
