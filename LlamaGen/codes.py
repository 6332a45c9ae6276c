"""Pre-extracted VQ codes on disk, in the original LlamaGen layout.

    <code-path>/imagenet<size>_codes/<i>.npy    int64 (1, n_aug, h*w): n_aug = 2 (image, h-flip) or 10 (ten-crop)
    <code-path>/imagenet<size>_labels/<i>.npy   int64 (1,)

Files written by the original extract_codes_c2i.py load as well. The dataset counts the files that exist (the
original assumed ImageNet's 1,281,167) and draws one augmentation per access.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from cca.errors import UsageError


def code_prefix(dataset: str) -> str:
    """The folder prefix of ``--dataset``: the original's ``imagenet_code`` keeps its files under ``imagenet*``."""
    return "imagenet" if dataset == "imagenet_code" else dataset


def code_dirs(code_path: str | os.PathLike, image_size: int, dataset: str = "imagenet") -> tuple[Path, Path]:
    root = Path(code_path)
    return root / f"{dataset}{image_size}_codes", root / f"{dataset}{image_size}_labels"


def _ids(folder: Path) -> set[int]:
    out = set()
    with os.scandir(folder) as it:
        for entry in it:
            stem, ext = os.path.splitext(entry.name)
            if ext == ".npy" and stem.isdigit():
                out.add(int(stem))
    return out


def load_npy(path: Path, source: str) -> np.ndarray:
    """np.load without pickles; an unreadable file exits with one line naming it."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UsageError(f"{source}: {path.parent.name}/{path.name} is not a readable .npy array "
                         f"({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None


class CodeDataset(Dataset):
    """Item i -> (codes (h*w,) int64, label () int64); one of the stored augmentations, drawn at random."""

    def __init__(self, code_path: str | os.PathLike, image_size: int, downsample_size: int = 16,
                 dataset: str = "imagenet", augment: bool = True):
        self.codes_dir, self.labels_dir = code_dirs(code_path, image_size, dataset)
        for folder in (self.codes_dir, self.labels_dir):
            if not folder.is_dir():
                raise UsageError(f"--code-path {code_path}: {folder.name}/ not found (expected {self.codes_dir.name}/"
                                 f" and {self.labels_dir.name}/ for --image-size {image_size}; run "
                                 f"LlamaGen/extract_codes_c2i.py first)")
        both = _ids(self.codes_dir) & _ids(self.labels_dir)
        if not both:
            raise UsageError(f"--code-path {code_path}: no <i>.npy files in both {self.codes_dir.name}/ and "
                             f"{self.labels_dir.name}/")
        self.ids = sorted(both)
        self.seq_len = (image_size // downsample_size) ** 2
        self.augment = augment
        # the original also mixes in a sibling '..._ten_crop_105' extraction with probability 1/2 when it exists
        sibling = Path(str(Path(code_path)).rstrip("/").replace("ten_crop", "ten_crop_105"))
        alt_codes, alt_labels = code_dirs(sibling, image_size, dataset)
        self.alt = (alt_codes, alt_labels) if "ten_crop" in str(code_path) and alt_codes.is_dir() and \
            alt_labels.is_dir() and sibling != Path(code_path) else None
        first = load_npy(self.codes_dir / f"{self.ids[0]}.npy", f"--code-path {code_path}")
        if first.dtype.kind not in "iu":
            raise UsageError(f"--code-path {code_path}: {self.codes_dir.name}/{self.ids[0]}.npy holds {first.dtype}; "
                             f"expected integer VQ codes")
        tokens = first.shape[-1] if first.ndim else 0
        if tokens != self.seq_len:
            side = int(round(tokens ** 0.5))
            raise UsageError(f"--code-path {code_path}: codes have {tokens} tokens per image "
                             f"({side}x{side} grid), but --image-size {image_size} / --downsample-size "
                             f"{downsample_size} needs {self.seq_len}")

    @staticmethod
    def _load_codes(folder: Path, i: int) -> np.ndarray:
        arr = np.load(folder / f"{i}.npy")
        return arr.reshape(-1, arr.shape[-1])                    # (n_aug, h*w)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, idx: int):
        i = self.ids[idx]
        codes_dir, labels_dir = self.codes_dir, self.labels_dir
        if self.alt is not None and self.augment and torch.rand(()) < 0.5:
            codes_dir, labels_dir = self.alt
        codes = self._load_codes(codes_dir, i)                   # (n_aug, h*w)
        aug = int(torch.randint(codes.shape[0], ())) if self.augment else 0
        label = np.load(labels_dir / f"{i}.npy").reshape(-1)[0]
        return torch.from_numpy(codes[aug].astype(np.int64)), torch.tensor(int(label), dtype=torch.long)
