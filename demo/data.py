"""Fashion-MNIST from the IDX files Debian's ``dataset-fashion-mnist`` installs, as small RGB tensors.

    <dir>/train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz  t10k-images-idx3-ubyte.gz  t10k-labels-idx1-ubyte.gz

(uncompressed files without ``.gz`` work too). The 28x28 gray images are padded with black to 32x32 and, for the
default 16 px, average-pooled 2x2: an exact, deterministic resize the tokenizers like (16 = 4 x 4 tokens of 4 px).
Images the models see are 3-channel (the gray value repeated), in [-1, 1]; images on disk / for the evaluator are
uint8 (N, H, W, 3), produced by the same rounding as the samplers' ``cca.sampling.to_uint8_nhwc``.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from cca.errors import UsageError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
ENV_VAR = "FASHION_MNIST_DIR"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
_IDX_MAGIC = {1: 2049, 3: 2051}   # labels (1-D), images (3-D)


def resolve_data_dir(flag_value: str | None) -> Path:
    """--data, else $FASHION_MNIST_DIR, else Debian's folder; one-line UsageError if the files are missing."""
    root = Path(flag_value or os.environ.get(ENV_VAR) or DEFAULT_DIR)
    missing = [f"{kind}-{part}" for kind in ("train", "t10k") for part in ("images-idx3-ubyte", "labels-idx1-ubyte")
               if not (root / f"{kind}-{part}.gz").is_file() and not (root / f"{kind}-{part}").is_file()]
    if missing:
        raise UsageError(f"--data {root}: Fashion-MNIST IDX files missing ({', '.join(missing)}); install Debian's "
                         f"dataset-fashion-mnist (make fashion-mnist) or set {ENV_VAR}")
    return root


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """One IDX file (big-endian header: magic, then one int32 per dimension; then uint8 data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic != _IDX_MAGIC[ndim]:
        raise UsageError(f"--data: {path} is not an IDX file of {ndim}-D uint8 data (magic {magic:#x})")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UsageError(f"--data: {path} is truncated ({data.size} bytes of data for shape {dims})")
    return data.reshape(dims)


def _find(root: Path, stem: str) -> Path:
    gz = root / f"{stem}.gz"
    return gz if gz.is_file() else root / stem


@dataclass
class Split:
    images: np.ndarray   # (N, S, S) uint8 gray, already resized
    labels: np.ndarray   # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None, seed: int = 0) -> "Split":
        """A class-balanced (as far as the data allows) random subset of n items; n None or >= N: self."""
        if n is None or n >= len(self):
            return self
        order = np.random.default_rng(seed).permutation(len(self))
        picked, per_class = [], -(-n // 10)
        counts = np.zeros(10, dtype=np.int64)
        for i in order:
            if counts[self.labels[i]] < per_class:
                picked.append(i)
                counts[self.labels[i]] += 1
            if len(picked) == n:
                break
        idx = np.sort(np.asarray(picked))
        return Split(self.images[idx], self.labels[idx])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (N, 3, S, S) float32 in [-1, 1], labels (N,) int64)."""
        x = torch.from_numpy(self.images).float().div_(127.5).sub_(1.0)       # (N, S, S)
        return x[:, None].expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(self.labels)

    def uint8_rgb(self) -> np.ndarray:
        """(N, S, S, 3) uint8, the evaluator's format."""
        return np.repeat(self.images[..., None], 3, axis=-1)


def resize_gray(images: np.ndarray, size: int) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, size, size) uint8: pad to 32 with black, then area-resize (exact 2x2 mean at 16)."""
    x = torch.from_numpy(np.array(images)).float()[:, None]                   # (N, 1, 28, 28)
    x = F.pad(x, (2, 2, 2, 2))                                                 # (N, 1, 32, 32)
    if size != 32:
        x = F.interpolate(x, size=(size, size), mode="area")                   # (N, 1, size, size)
    return x[:, 0].round().clamp_(0, 255).to(torch.uint8).numpy()


def load_split(root: Path, train: bool, size: int) -> Split:
    kind = "train" if train else "t10k"
    images = read_idx(_find(root, f"{kind}-images-idx3-ubyte"), 3)
    labels = read_idx(_find(root, f"{kind}-labels-idx1-ubyte"), 1).astype(np.int64)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise UsageError(f"--data {root}: {kind} images {images.shape} do not match labels {labels.shape} "
                         f"(expected (N, 28, 28) and (N,))")
    if labels.min() < 0 or labels.max() > 9:
        raise UsageError(f"--data {root}: {kind} labels outside 0..9")
    return Split(resize_gray(images, size), labels)


class ImageLabelDataset(torch.utils.data.Dataset):
    """(image (3, S, S) in [-1, 1], label) pairs from a Split: what ``VAR.adapter.VARAdapter`` expects."""

    def __init__(self, split: Split):
        self.x, self.y = split.tensors()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class CodeLabelDataset(torch.utils.data.Dataset):
    """(codes (L,) int64, label) pairs: what ``LlamaGen.adapter.LlamaGenAdapter`` expects (like CodeDataset)."""

    def __init__(self, codes: torch.Tensor, labels: torch.Tensor):
        self.codes, self.labels = codes.long(), labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.codes[i], self.labels[i]
