"""Streaming access to ADM-style sample / reference batches (.npz with `arr_0` uint8 (N, H, W, 3) images).

Images are read batch by batch straight from the zip member, so 50k 256px images never sit in memory at once
(the idea of ADM's StreamingNpzArrayReader). Validation reads only headers (plus a min/max pass for integer
dtypes other than uint8) and raises `InputError` with one line naming the file.
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STATS_KEYS = ("mu", "sigma", "mu_s", "sigma_s")


class InputError(ValueError):
    """Bad user input (file, flag); the message is one line and names the culprit."""


@dataclass
class ImageBatchInfo:
    path: Path
    keys: list[str]
    shape: tuple[int, ...]
    dtype: np.dtype
    streamable: bool  # False: Fortran order / unusual npy version -> loaded whole, as ADM does

    @property
    def count(self) -> int:
        return self.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        return self.shape[1], self.shape[2]


def _open_member(zf: zipfile.ZipFile, key: str):
    return zf.open(f"{key}.npy", "r")


def _read_header(f) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    return None


def inspect_images(path: str | os.PathLike, key: str = "arr_0", scan_range: bool = True) -> ImageBatchInfo:
    """Checks that `path` holds `key` as (N, H, W, C) images, C in {1, 3}, uint8 (or integers within [0, 255])."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise InputError(f"{path}: not an .npz archive (expected np.savez output with {key})") from None
    with zf:
        keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
        if key not in keys:
            raise InputError(f"{path}: missing {key} (expected uint8 images (N, H, W, 3)); keys: {keys}")
        with _open_member(zf, key) as f:
            header = _read_header(f)
    if header is None or header[1] or header[2].hasobject:
        arr = np.load(path, allow_pickle=False)[key]
        shape, dtype, streamable = arr.shape, arr.dtype, False
    else:
        shape, dtype, streamable = tuple(header[0]), header[2], True
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise InputError(f"{path}: {key} has shape {tuple(shape)}; expected images (N, H, W, 3) (or C=1)")
    if shape[0] < 2 or shape[1] < 1 or shape[2] < 1:
        raise InputError(f"{path}: {key} has shape {tuple(shape)}; need at least 2 non-empty images")
    if dtype.kind not in "ui":
        raise InputError(f"{path}: {key} has dtype {dtype}; expected uint8 images with values in [0, 255]")
    info = ImageBatchInfo(path, keys, tuple(int(s) for s in shape), np.dtype(dtype), streamable)
    if scan_range and info.dtype != np.uint8:
        lo, hi = 0, 0
        for batch in _raw_batches(info, key, 256):
            lo, hi = min(lo, int(batch.min())), max(hi, int(batch.max()))
        if lo < 0 or hi > 255:
            raise InputError(f"{path}: {key} values range over [{lo}, {hi}]; expected uint8 images in [0, 255]")
    return info


def _read_exact(f, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = f.read(size - got)
        if not chunk:
            raise InputError(f"truncated array data: expected {size} bytes, got {got}")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _raw_batches(info: ImageBatchInfo, key: str, batch_size: int, limit: int | None = None) -> Iterator[np.ndarray]:
    total = info.count if limit is None else min(limit, info.count)
    if not info.streamable:
        arr = np.load(info.path, allow_pickle=False)[key]
        for start in range(0, total, batch_size):
            yield arr[start:min(start + batch_size, total)]
        return
    per_image = int(np.prod(info.shape[1:])) * info.dtype.itemsize
    with zipfile.ZipFile(info.path) as zf, _open_member(zf, key) as f:
        _read_header(f)
        for start in range(0, total, batch_size):
            n = min(batch_size, total - start)
            data = _read_exact(f, n * per_image)
            yield np.frombuffer(data, dtype=info.dtype).reshape((n,) + info.shape[1:])


def iter_image_batches(info: ImageBatchInfo, batch_size: int, limit: int | None = None,
                       key: str = "arr_0") -> Iterator[np.ndarray]:
    """Yields uint8 (b, H, W, C) batches in file order (at most `limit` images)."""
    for batch in _raw_batches(info, key, batch_size, limit):
        yield batch if batch.dtype == np.uint8 else batch.astype(np.uint8)


def read_labels(path: str | os.PathLike) -> np.ndarray | None:
    with np.load(path, allow_pickle=False) as data:
        return np.asarray(data["arr_1"]) if "arr_1" in data.files else None


def read_precomputed_stats(path: str | os.PathLike) -> dict | None:
    """mu, sigma and (if present) mu_s, sigma_s, plus feature_net / weights_sha256 when we wrote the file;
    None when the file has no `mu`."""
    with np.load(path, allow_pickle=False) as data:
        if "mu" not in data.files:
            return None
        for pair in (("mu", "sigma"), ("mu_s", "sigma_s")):
            present = [k in data.files for k in pair]
            if any(present) and not all(present):
                raise InputError(f"{path}: has {pair[present.index(True)]} without "
                                 f"{pair[present.index(False)]}; pass --recompute-ref-stats")
        stats = {k: np.asarray(data[k], dtype=np.float64) if k in data.files else None for k in STATS_KEYS}
        for k in ("feature_net", "weights_sha256"):
            stats[k] = str(data[k]) if k in data.files else None
    return stats


def write_reference_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], images: Iterable[np.ndarray],
                        image_shape: tuple[int, ...]) -> None:
    """Writes `arr_0` (streamed from `images`, `image_shape` = (N, H, W, C)) plus `arrays`; atomic rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("arr_0.npy", "w", force_zip64=True) as f:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                      "shape": tuple(image_shape)}
            np.lib.format.write_array_header_1_0(f, header)
            written = 0
            for batch in images:
                f.write(np.ascontiguousarray(batch, dtype=np.uint8).tobytes())
                written += len(batch)
        if written != image_shape[0]:
            raise RuntimeError(f"wrote {written} images, header promised {image_shape[0]}")
        for name, arr in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(arr), allow_pickle=False)
    os.replace(tmp, path)
