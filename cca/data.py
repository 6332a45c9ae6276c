"""Deterministic, resumable sharding of a map-style dataset into per-rank batches."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset, Sampler


class ResumableBatchSampler(Sampler[list[int]]):
    """Per-rank batches of a seeded per-epoch permutation; can start mid-epoch.

    Every epoch the whole index range is permuted with ``seed + epoch``, cut to a multiple of
    ``world * batch_size`` (the tail is dropped, so all ranks take the same number of steps), and rank r takes
    batches ``r, r + world, ...`` of the global batches, i.e. global batch g is rows [g·W·B, (g+1)·W·B) split
    across ranks in order. ``set_epoch(epoch, start_batch)`` skips the first ``start_batch`` batches (resume).
    """

    def __init__(self, num_items: int, batch_size: int, *, rank: int = 0, world: int = 1, seed: int = 0,
                 shuffle: bool = True):
        self.num_items, self.batch_size = num_items, batch_size
        self.rank, self.world, self.seed, self.shuffle = rank, world, seed, shuffle
        self.epoch, self.start_batch = 0, 0

    def __len__(self) -> int:
        return self.num_items // (self.world * self.batch_size) - self.start_batch

    @property
    def batches_per_epoch(self) -> int:
        return self.num_items // (self.world * self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_items, generator=g).tolist()
        else:
            order = list(range(self.num_items))
        per_global = self.world * self.batch_size
        for b in range(self.start_batch, self.batches_per_epoch):
            start = b * per_global + self.rank * self.batch_size
            yield order[start:start + self.batch_size]


class SeededFetch(Dataset):
    """``dataset`` with item i of epoch e fetched under the torch seed f(seed, e, i): its random augmentation is the
    same in any data-loader worker, at any world size and after a resume. The caller's RNG is left untouched."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list:
        items = []
        with torch.random.fork_rng(devices=[]):
            for i in indices:
                torch.manual_seed(((self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(i)) % 2**63)
                items.append(self.dataset[i])
        return items
