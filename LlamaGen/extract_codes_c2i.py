"""Pre-extract VQ codes of an image folder for LlamaGen fine-tuning (the original's "extract codes" step).

    torchrun --nproc_per_node=8 LlamaGen/extract_codes_c2i.py --vq-ckpt vq_ds16_c2i.pt \
        --data-path /path/to/imagenet/train --code-path /path/to/codes --ten-crop --crop-range 1.1 --image-size 384

Writes the original's layout (see LlamaGen/codes.py): ``<code-path>/<dataset><size>_codes/<i>.npy`` int64
(1, n_aug, h*w) with n_aug = 10 (``--ten-crop``: TenCrop of an ADM centre crop ``crop-range`` times larger, i.e.
five crops then their horizontal flips) or 2 (the centre crop and its horizontal flip), and
``<dataset><size>_labels/<i>.npy`` int64 (1,). ``i`` is the image's index in the sorted ImageFolder.

Text-to-image data: when --data-path holds LlamaGen's T2I listing (``.jsonl`` files, one JSON record with an
"image_path" per line; --data-start / --data-end pick sorted entries), each image is encoded as one centre crop and
written where the original extract_codes_t2i.py put it: ``<code-path>/<jsonl stem>/<line index>.npy`` int64
(1, h*w), beside the T5 features of the same record (LlamaGen/extract_t5_features.py).

Processes take every world-th image; finished files are skipped, so a rerun resumes. Runs as one process (CPU or
GPU).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Optional

if __package__ in (None, ""):   # run as a script: make the repository root importable instead of LlamaGen/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import torch
from PIL import Image

from cca import dist as cdist
from cca.checkpoint import check_writable_dir, require_checkpoint
from LlamaGen.captions import listed_records, record_file
from LlamaGen.checkpoints import load_vq
from LlamaGen.codes import code_dirs
from LlamaGen.vq_model import VQ_models
from cca.cli import exits_on_errors, finish_process, start_process
from cca.errors import UsageError


def center_crop_arr(image: Image.Image, size: int) -> Image.Image:
    """ADM's centre crop: halve with a box filter while the short side is >= 2x size, bicubic-resize the short
    side to ``size``, then cut the centre square."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return Image.fromarray(arr[top:top + size, left:left + size])


class ViewsTransform:
    """PIL image -> (n_aug, 3, S, S) float tensor in [-1, 1] (n_aug = 1 without ``flip``)."""

    def __init__(self, image_size: int, ten_crop: bool, crop_range: float, flip: bool = True):
        from torchvision import transforms
        self.image_size, self.ten_crop, self.flip = image_size, ten_crop, flip
        self.crop_size = int(image_size * crop_range) if ten_crop else image_size
        self.ten = transforms.TenCrop(image_size)
        self.to_tensor = transforms.ToTensor()

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = center_crop_arr(image.convert("RGB"), self.crop_size)
        if self.ten_crop:
            views = torch.stack([self.to_tensor(c) for c in self.ten(image)])          # (10, 3, S, S)
        else:
            x = self.to_tensor(image)
            views = torch.stack([x, torch.flip(x, dims=[-1])] if self.flip else [x])    # (2 or 1, 3, S, S)
        return views * 2 - 1


class ListedImages(torch.utils.data.Dataset):
    """The images of a T2I listing: item i -> (views (1, 3, S, S), -1: no class label)."""

    def __init__(self, paths: list[str], transform: ViewsTransform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(Image.open(self.paths[i])), -1


def save_npy(path: Path, arr: np.ndarray) -> None:
    """np.save to a temp file beside ``path``, then rename: a killed run never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="extract_codes_c2i.py", allow_abbrev=False, description=__doc__.splitlines()[0])
    p.add_argument("--data-path", required=True,
                   help="ImageFolder root (one sub-folder per class), or a folder of .jsonl T2I listings")
    p.add_argument("--code-path", required=True, help="output folder")
    p.add_argument("--vq-model", choices=list(VQ_models), default="VQ-16")
    p.add_argument("--vq-ckpt", default="vq_ds16_c2i", help="tokenizer (file, release name or hf://)")
    p.add_argument("--codebook-size", type=int, default=16384)
    p.add_argument("--codebook-embed-dim", type=int, default=8)
    p.add_argument("--dataset", default="imagenet", help="prefix of the output folders")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--ten-crop", action="store_true", help="10 crops of a larger centre crop instead of 2 views")
    p.add_argument("--crop-range", type=float, default=1.1, help="with --ten-crop: centre crop of size x this")
    p.add_argument("--data-start", type=int, default=0, help="T2I listing: first sorted entry to read")
    p.add_argument("--data-end", type=int, default=None, help="T2I listing: last sorted entry (inclusive)")
    p.add_argument("--global-seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--debug", action="store_true", help="accepted for compatibility (one process is the default)")
    return p


Outputs = Callable[[int], tuple[Path, Optional[Path]]]   # image index -> (codes file, label file or None)


def class_images(args: argparse.Namespace) -> tuple[torch.utils.data.Dataset, Outputs]:
    """An ImageFolder: (n_aug views, class) per image, written to the c2i code and label folders."""
    from torchvision.datasets import ImageFolder
    try:
        dataset = ImageFolder(args.data_path, transform=ViewsTransform(args.image_size, args.ten_crop,
                                                                       args.crop_range))
    except (FileNotFoundError, RuntimeError) as e:
        raise UsageError(f"--data-path {args.data_path}: {e}") from None
    codes_dir, labels_dir = code_dirs(args.code_path, args.image_size, args.dataset)
    return dataset, lambda i: (codes_dir / f"{i}.npy", labels_dir / f"{i}.npy")


def listed_images(args: argparse.Namespace) -> tuple[torch.utils.data.Dataset, Outputs]:
    """A T2I listing: one centre crop per record's image_path, written as <stem>/<line>.npy (no label)."""
    if args.ten_crop:
        raise UsageError("--ten-crop: T2I listings are encoded as one centre crop (as the original "
                         "extract_codes_t2i.py); drop the flag")
    try:
        records = listed_records(args.data_path, args.data_start, args.data_end)
    except ValueError as e:
        raise UsageError(str(e)) from None
    bad = next(((stem, i) for r, stem, i in records if not isinstance(r.get("image_path"), str)), None)
    if bad is not None:
        raise UsageError(f"--data-path: {bad[0]}.jsonl line {bad[1] + 1} has no \"image_path\" string")
    dataset = ListedImages([r["image_path"] for r, _, _ in records],
                           ViewsTransform(args.image_size, False, 1.0, flip=False))
    return dataset, lambda i: (record_file(args.code_path, records[i][1], records[i][2]), None)


@exits_on_errors
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not os.path.isdir(args.data_path):
        raise UsageError(f"--data-path {args.data_path}: folder not found")
    require_checkpoint(args.vq_ckpt, "--vq-ckpt")
    if args.ten_crop and args.crop_range < 1.0:
        raise UsageError(f"--crop-range must be >= 1 with --ten-crop, got {args.crop_range}")
    listing = any(name.endswith(".jsonl") for name in os.listdir(args.data_path))
    dataset, outputs = listed_images(args) if listing else class_images(args)
    dist = start_process()
    torch.manual_seed(args.global_seed * dist.world_size + dist.rank)
    vq = load_vq(args.vq_ckpt, args.vq_model, args.codebook_size, args.codebook_embed_dim, dist.device)
    if args.image_size % vq.downsample:
        raise UsageError(f"--image-size {args.image_size} is not a multiple of the tokenizer's {vq.downsample}")
    if dist.is_main:
        check_writable_dir(args.code_path, "--code-path")
    cdist.barrier()
    mine = [i for i in range(dist.rank, len(dataset), dist.world_size)
            if not all(f is None or f.is_file() for f in outputs(i))]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, mine), batch_size=1, shuffle=False,
                                         num_workers=args.num_workers)
    from tqdm import tqdm
    bar = tqdm(zip(mine, loader), total=len(mine), desc="extract codes", disable=not dist.is_main)
    with torch.no_grad():
        for i, (views, label) in bar:
            views = views[0].to(dist.device)                                           # (n_aug, 3, S, S)
            _, _, (_, _, indices) = vq.encode(views)
            codes = indices.reshape(1, views.shape[0], -1).cpu().numpy().astype(np.int64)   # (1, n_aug, h*w)
            codes_file, label_file = outputs(i)
            for f in (codes_file, label_file):
                if f is not None:
                    f.parent.mkdir(parents=True, exist_ok=True)
            save_npy(codes_file, codes if label_file is not None else codes[:, 0])   # T2I: (1, h*w)
            if label_file is not None:
                save_npy(label_file, label.reshape(1).numpy().astype(np.int64))
    finish_process(dist, f"codes of {len(dataset)} images under {args.code_path}")


if __name__ == "__main__":
    main()
