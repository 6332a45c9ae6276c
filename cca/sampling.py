"""Sampling helpers shared by both families: logit filtering, guidance, and a resumable multi-process npz writer."""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from cca.errors import UsageError


TOP_P_OFF = 1.0      # the nucleus of the whole mass: no nucleus filtering (top_k's "off" is 0)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = TOP_P_OFF) -> torch.Tensor:
    """Copy of ``logits`` (..., V) with -inf outside the top-k and outside the nucleus of mass ``top_p``.

    top_k <= 0 or >= V: no top-k; top_p >= 1 (``TOP_P_OFF``): no nucleus, and top_p must be > 0 (VAR's API, whose
    0 means off, converts at its edge). The most likely token is always kept, and so is
    every token tied with the smallest kept logit (as the original's ``logits < kth`` comparison does). With a
    top-k the nucleus is found among the k sorted values only: no sort over the whole vocabulary.
    """
    if not top_p > 0:
        raise ValueError(f"top_p must be in (0, 1] (1: no nucleus filtering), got {top_p}")
    out = logits.clone()
    V = out.shape[-1]
    nucleus = top_p < 1.0
    if 0 < top_k < V:
        ranked = torch.topk(out, top_k, dim=-1).values                # (..., k), descending
        out.masked_fill_(out < ranked[..., -1:], float("-inf"))
    elif nucleus:
        ranked = torch.sort(out, dim=-1, descending=True).values       # (..., V)
    if nucleus:
        lse = torch.logsumexp(out.float(), dim=-1, keepdim=True)       # mass of everything still kept
        p = (ranked.float() - lse).exp()                              # (..., k) probabilities, descending
        before = p.cumsum(dim=-1) - p                                 # mass of the better-ranked tokens
        kept = ranked.masked_fill(before >= top_p, float("inf"))     # drop once top_p is already covered
        out.masked_fill_(out < kept.amin(dim=-1, keepdim=True), float("-inf"))
    return out


def sample_from_logits(logits: torch.Tensor, *, top_k: int = 0, top_p: float = TOP_P_OFF, temperature: float = 1.0,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row: (B, V) logits -> (B,) int64, without host syncs.

    Draws by inverting the cumulative distribution with one uniform number per row (``torch.multinomial`` draws
    V exponential numbers per row, which dominates a small model's sampling step on the CPU)."""
    if temperature != 1.0:
        logits = logits / max(temperature, 1e-5)
    probs = filter_logits(logits, top_k, top_p).float().softmax(dim=-1)  # (B, V)
    cdf = probs.cumsum(dim=-1)                                          # (B, V), nondecreasing
    total = cdf[:, -1:]                                                 # (B, 1), 1 up to rounding
    u = torch.rand(total.shape, generator=generator, device=total.device, dtype=total.dtype) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))   # u < total: a token of mass > 0
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)          # first token whose cdf exceeds u


def guide(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, w: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance in the one internal form u + w·(c − u) (w = 1: no guidance)."""
    return uncond_logits + w * (cond_logits - uncond_logits)


def balanced_labels(num_samples: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """Class of every global sample index: each class equally often (± 1), in a seeded order independent of
    the world size."""
    labels = np.arange(num_samples, dtype=np.int64) % num_classes
    return np.random.default_rng(seed).permutation(labels)


def random_labels(num_samples: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """Class of every global sample index drawn independently and uniformly (the original LlamaGen sampler's
    labels: a uniform draw per sample), seeded, independent of the world size."""
    return np.random.default_rng(seed).integers(0, num_classes, num_samples, dtype=np.int64)


class ShardedNpzWriter:
    """DiT-style multi-process sampling into one npz, resumable.

    Global index i has class ``labels[i]``. On a run every rank takes every ``world``-th of the indices not yet
    done (as found when the writer was made; the caller puts a barrier between making the writers and the first
    save), in batches; each finished batch is committed as two .npy files under ``<out>/<name>.parts/`` (images
    first, then the index file, each written to a temp name and renamed), so a killed run loses at most the batch
    in flight and a rerun (with any world size) produces every index exactly once. ``finalize`` (rank 0, after a
    barrier) writes ``<out>/<name>.npz`` with ``arr_0`` uint8 (N, H, W, 3), ``arr_1`` int64 labels and, if given,
    ``settings`` (their JSON text), in index order or shuffled by ``numpy.random.RandomState(shuffle_seed)``'s
    permutation (the original VAR_sample.py's order; ADM's Inception Score uses contiguous splits, so a
    class-sorted file scores wrong).

    ``settings`` are what decides the samples (checkpoint, guidance, counts, seed, ...; not the batch size or the
    number of processes, which may change between a killed run and its resumption). They are recorded with the
    first batch and in the npz; a rerun with other settings is refused, never silently mixed or skipped.
    """

    def __init__(self, out_dir: str | os.PathLike, name: str, labels: np.ndarray, *, rank: int = 0, world: int = 1,
                 batch_size: int = 16, shuffle_seed: int | None = 0, settings: dict | None = None):
        self.out_dir = Path(out_dir)
        self.name = name
        self.labels = np.asarray(labels, dtype=np.int64)
        self.rank, self.world, self.batch_size = rank, world, batch_size
        self.shuffle_seed = shuffle_seed
        self.settings = json.dumps(settings or {}, sort_keys=True, default=str)
        self.parts = self.out_dir / f"{name}.parts"
        self.npz_path = self.out_dir / f"{name}.npz"
        self._check_labels()       # nothing is written before the first finished batch
        self._recorded = False
        # every rank must split the same snapshot of what is done: the caller waits (a barrier) for all ranks to
        # have made their writer before any of them saves a batch
        self._done_at_start = self.done_indices()

    def _check_labels(self) -> None:
        """Finished batches only count for the same index -> class assignment, recorded as ``labels.npy`` in the
        parts folder with the first batch: a folder made with other settings is refused, never silently mixed."""
        record = self.parts / "labels.npy"
        if record.is_file() and not np.array_equal(np.load(record), self.labels):
            raise UsageError(f"{self.parts} holds samples for another index -> class assignment (number of "
                             f"samples or classes changed); remove it or choose another sample folder")
        settings = self.parts / "settings.json"
        if settings.is_file():
            _refuse_other_settings(settings.read_text(), self.settings, self.parts)

    def finished(self) -> bool:
        """True if the npz exists and was made with these settings; refuses (UsageError) one made otherwise."""
        if not self.npz_path.is_file():
            return False
        with np.load(self.npz_path) as npz:
            recorded = str(npz["settings"]) if "settings" in npz.files else "{}"
        _refuse_other_settings(recorded, self.settings, self.npz_path)
        return True

    def _write_atomic(self, path: Path, arr: np.ndarray) -> None:
        tmp = path.with_name(f"{path.name}.r{self.rank}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, arr)
        os.replace(tmp, path)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def done_indices(self) -> np.ndarray:
        done = [np.load(p) for p in sorted(self.parts.glob("*.idx.npy"))]
        return np.concatenate(done) if done else np.zeros(0, dtype=np.int64)

    def pending_batches(self) -> Iterator[np.ndarray]:
        """This rank's remaining global indices, in batches, from the snapshot taken when the writer was made."""
        todo = np.setdiff1d(np.arange(self.num_samples), self._done_at_start)
        mine = todo[self.rank::self.world]
        for s in range(0, len(mine), self.batch_size):
            yield mine[s:s + self.batch_size]

    def num_pending(self) -> int:
        todo = self.num_samples - len(np.unique(self._done_at_start))
        return len(range(self.rank, todo, self.world))

    def save_batch(self, indices: np.ndarray, images: np.ndarray | torch.Tensor) -> None:
        if isinstance(images, torch.Tensor):
            images = images.cpu().numpy()
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(indices):
            raise ValueError(f"save_batch: expected uint8 (b, H, W, 3) for {len(indices)} indices, "
                             f"got {images.dtype} {images.shape}")
        if not self._recorded:
            self.parts.mkdir(parents=True, exist_ok=True)
            self._write_atomic(self.parts / "labels.npy", self.labels)     # same content from every rank
            tmp = self.parts / f"settings.json.r{self.rank}.tmp"
            tmp.write_text(self.settings)
            os.replace(tmp, self.parts / "settings.json")
            self._recorded = True
        stem = self.parts / f"r{self.rank}-{int(indices[0]):09d}-{len(indices)}"
        for suffix, arr in ((".img.npy", images), (".idx.npy", np.asarray(indices, dtype=np.int64))):
            self._write_atomic(stem.with_name(stem.name + suffix), arr)

    def finalize(self, extra: dict[str, np.ndarray] | None = None) -> Path:
        """Assemble the npz (rank 0 only; call after every rank finished). Streams rows; memory stays bounded.
        ``extra``: more per-sample arrays (N, ...) in index order, stored under their names in the npz's order."""
        idx_files = sorted(self.parts.glob("*.idx.npy"))
        chunks = [(np.load(p), np.load(str(p).replace(".idx.npy", ".img.npy"), mmap_mode="r")) for p in idx_files]
        where = np.full(self.num_samples, -1, dtype=np.int64)
        for c, (idx, _) in enumerate(chunks):
            if (where[idx] >= 0).any():
                raise RuntimeError(f"{self.parts}: an index was produced twice")
            where[idx] = c
        if (where < 0).any():
            raise RuntimeError(f"{self.parts}: {(where < 0).sum()} of {self.num_samples} samples missing")
        pos_in_chunk = {}
        for c, (idx, _) in enumerate(chunks):
            for j, i in enumerate(idx):
                pos_in_chunk[int(i)] = j
        order = np.arange(self.num_samples) if self.shuffle_seed is None else \
            np.random.RandomState(self.shuffle_seed).permutation(self.num_samples)
        H, W = chunks[0][1].shape[1:3]
        tmp = self.npz_path.with_name(self.npz_path.name + ".tmp")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("arr_0.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": "|u1", "fortran_order": False, "shape": (self.num_samples, H, W, 3)})
                for i in order:
                    f.write(np.ascontiguousarray(chunks[where[i]][1][pos_in_chunk[int(i)]]).tobytes())
            with zf.open("arr_1.npy", "w") as f:
                np.save(f, self.labels[order])
            for key, values in (extra or {}).items():
                with zf.open(f"{key}.npy", "w") as f:
                    np.save(f, np.asarray(values)[order])
            if self.settings != "{}":
                with zf.open("settings.npy", "w") as f:
                    np.save(f, np.array(self.settings))
        os.replace(tmp, self.npz_path)
        return self.npz_path


def _refuse_other_settings(recorded: str, wanted: str, where: Path) -> None:
    """One line naming the settings that differ between a recorded run and this one."""
    old, new = json.loads(recorded), json.loads(wanted)
    diff = [f"{k}: {old.get(k, '(not recorded)')} -> {new.get(k, '(not set)')}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]
    if diff:
        raise UsageError(f"{where} was sampled with other settings ({'; '.join(diff[:4])}); remove it or choose "
                         f"another sample folder")


def to_uint8_nhwc(images: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0), *,
                  rounding: str = "nearest") -> np.ndarray:
    """(B, 3, H, W) float images in ``value_range`` -> (B, H, W, 3) uint8, clamped.

    ``nearest``: x·s + (0.5 - lo·s) with s = 255 / (hi - lo) in float32, then cut: the nearest level (half up);
    for [-1, 1] this is exactly the original LlamaGen sampler's ``clamp(127.5 x + 128, 0, 255)``.
    ``truncate``: x·s - lo·s in the images' own dtype (float16 under the sampler's autocast), then cut: the original
    VAR_sample.py's ``x * 255`` cast to uint8, which makes every pixel on average half a level darker.
    """
    lo, hi = value_range
    scale = 255.0 / (hi - lo)
    if rounding == "truncate":
        x = images * scale - lo * scale
    elif rounding == "nearest":
        x = images.float() * scale + (0.5 - lo * scale)
    else:
        raise ValueError(f"rounding must be nearest or truncate, got {rounding!r}")
    return x.clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()
