"""ImageNet-style image folders for VAR fine-tuning (one sub-folder per class, torchvision's DatasetFolder).

Transforms as in the original VAR: optional horizontal flip, resize the shorter side to ``mid_reso`` x final size
(Lanczos), random crop to final x final, map to [-1, 1].
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms
from torchvision.datasets.folder import IMG_EXTENSIONS, DatasetFolder
from cca.errors import UsageError


def micro_batch(bs: int, ac: int, world: int) -> int:
    """Per-process micro-batch of VAR_finetune.py's ``--bs`` global batch over ``--ac`` steps and ``world`` processes
    (rounded, as the original's arg_util does); UsageError when it is empty."""
    micro = round(bs / ac / world)
    if micro < 1:
        raise UsageError(f"--bs {bs} with --ac {ac} on {world} process(es) leaves an empty per-process batch "
                         f"(need --bs >= --ac x processes)")
    return micro


def to_plus_minus_one(x: torch.Tensor) -> torch.Tensor:
    return x.mul(2).sub_(1)


def train_transform(final_reso: int, mid_reso: float = 1.125, hflip: bool = False) -> transforms.Compose:
    steps = [transforms.RandomHorizontalFlip()] if hflip else []
    steps += [transforms.Resize(round(mid_reso * final_reso), interpolation=transforms.InterpolationMode.LANCZOS),
              transforms.RandomCrop((final_reso, final_reso)),
              transforms.ToTensor(), to_plus_minus_one]
    return transforms.Compose(steps)


def load_rgb(path: str) -> Image.Image:
    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")


def resolve_image_root(data_path: str | os.PathLike, flag: str = "--data_path") -> Path:
    """The class-folder root: ``data_path/train`` when it exists (ImageNet layout), else ``data_path`` itself.
    Raises UsageError (one line) if it holds no class folder with images."""
    root = Path(data_path)
    if not root.is_dir():
        raise UsageError(f"{flag}: {root} is not a folder (expected one sub-folder of images per class)")
    if (root / "train").is_dir():
        root = root / "train"
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if not class_dirs:
        raise UsageError(f"{flag}: {root} has no class sub-folders (expected <class>/<image> files)")
    exts = tuple(IMG_EXTENSIONS)
    empty = [d.name for d in class_dirs if not any(f.name.lower().endswith(exts) for f in d.iterdir())]
    if empty:
        raise UsageError(f"{flag}: class folder(s) without images in {root}: {', '.join(empty[:5])}")
    return root


def build_train_dataset(data_path: str | os.PathLike, final_reso: int, mid_reso: float = 1.125,
                        hflip: bool = False, num_classes: int | None = None) -> DatasetFolder:
    root = resolve_image_root(data_path)
    dataset = DatasetFolder(str(root), loader=load_rgb, extensions=IMG_EXTENSIONS,
                            transform=train_transform(final_reso, mid_reso, hflip))
    if num_classes is not None and len(dataset.classes) != num_classes:
        raise UsageError(f"--data_path: {root} has {len(dataset.classes)} class folders but the model has "
                         f"--num_classes {num_classes}")
    return dataset
