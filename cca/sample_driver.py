"""The one sample driver: global sample indices -> one npz, over any number of processes, resumable.

Both samplers (VAR_sample.py, LLamaGen_sample_ddp.py) map their flags onto a ``SampleRun`` and hand over a
``load`` function from their family that returns a ``SampleFn``. The driver owns what they share: the writable
folder check, the ``ShardedNpzWriter`` and its barrier, the seed of every batch, PNGs, finalisation on rank 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cca import dist as cdist
from cca.checkpoint import check_writable_dir
from cca.sampling import ShardedNpzWriter

# (b,) int64 labels on the device, the batch's generator seed -> (b, H, W, 3) uint8 images
SampleFn = Callable[[torch.Tensor, int], np.ndarray]


@dataclass
class SampleRun:
    out_dir: str | Path          # folder of the npz, its .parts/ and the PNG folder
    out_flag: str                # the flag naming it, for errors (--sample_dir / --sample-dir)
    name: str                    # <out_dir>/<name>.npz
    labels: np.ndarray           # class of every global sample index
    batch_size: int              # per process
    seed: int                    # batch seed: seed * 1_000_003 + its first global index (any world size)
    settings: dict = field(default_factory=dict)     # what decides the samples (a rerun with others is refused)
    shuffle_seed: int | None = None                 # npz order: index order, or this seed's permutation
    png: bool = False            # also <out_dir>/<name>/<index>.png
    say: Callable[[str], None] = print              # rank 0's messages
    extra: dict[str, np.ndarray] = field(default_factory=dict)   # more per-index arrays (N, ...) for the npz


def batch_seed(seed: int, first_index: int) -> int:
    return seed * 1_000_003 + first_index


def open_writer(run: SampleRun, dist: cdist.Dist) -> ShardedNpzWriter:
    """The writer of ``run`` on every rank, after rank 0 proved the folder writable; all ranks hold their snapshot
    of the finished batches before this returns."""
    if dist.is_main:
        check_writable_dir(run.out_dir, run.out_flag)
    cdist.barrier()
    writer = ShardedNpzWriter(run.out_dir, run.name, run.labels, rank=dist.rank, world=dist.world_size,
                              batch_size=run.batch_size, shuffle_seed=run.shuffle_seed, settings=run.settings)
    cdist.barrier()
    return writer


def sample_npz(run: SampleRun, dist: cdist.Dist, load: Callable[[], SampleFn]) -> Path | None:
    """Sample every pending index of ``run`` (``load`` runs only when some are pending) and write the npz; returns
    its path on rank 0 (None elsewhere, and when an npz of the same settings exists already)."""
    writer = open_writer(run, dist)
    if writer.finished():
        if dist.is_main:
            run.say(f"{writer.npz_path} already exists (same settings); nothing to do")
        return None
    sample = load()
    png_dir = Path(run.out_dir) / run.name
    if run.png:
        png_dir.mkdir(parents=True, exist_ok=True)
    batches = list(writer.pending_batches())
    if dist.is_main:
        run.say(f"sampling {len(run.labels)} images ({writer.num_pending()} left on rank 0) with "
                f"{dist.world_size} process(es) into {writer.npz_path}")
    from tqdm.auto import tqdm
    bar = tqdm(total=sum(len(b) for b in batches), desc=f"sampling {run.name}", disable=not dist.is_main,
               dynamic_ncols=True)
    for indices in batches:
        images = sample(torch.from_numpy(run.labels[indices]).to(dist.device), batch_seed(run.seed, int(indices[0])))
        if run.png:
            save_pngs(png_dir, indices, images)
        writer.save_batch(indices, images)
        bar.update(len(indices))
    bar.close()
    cdist.barrier()
    path = writer.finalize(run.extra) if dist.is_main else None
    cdist.barrier()
    cdist.cleanup()
    return path


def save_pngs(folder: Path, indices: np.ndarray, images: np.ndarray) -> None:
    from PIL import Image
    for i, img in zip(indices, images):
        Image.fromarray(img).save(folder / f"{int(i):06d}.png")
