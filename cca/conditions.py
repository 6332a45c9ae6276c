"""Positive / negative conditions for a CCA batch.

Negatives are the batch's own labels rolled by one position (``torch.roll(labels, -1)``), as in the original
release. A roll rather than a random permutation: a permutation maps a label to itself with probability ~1/B per
row, which at the small per-GPU batch sizes used in practice silently turns many negatives into positives.
The roll is taken over the whole per-rank batch *before* it is split into gradient-accumulation micro-batches, so
the pairing does not depend on the micro-batch size (the original rolled inside micro-batches of 2).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Conditions:
    pos: torch.Tensor               # (B,) labels fed with the positive half
    neg: torch.Tensor               # (B,) labels fed with the negative half
    neg_is_positive: torch.Tensor | None   # (B,) bool: the "negative" is really a positive pair; None if uncond_ratio == 0
    null_rows: torch.Tensor         # (B,) bool: rows whose condition was replaced by the null class

    def select(self, rows: slice) -> "Conditions":
        mask = None if self.neg_is_positive is None else self.neg_is_positive[rows]
        return Conditions(self.pos[rows], self.neg[rows], mask, self.null_rows[rows])


def make_conditions(labels: torch.Tensor, null_class: int, uncond_ratio: float = 0.0,
                    generator: torch.Generator | None = None, uniform_draws: torch.Tensor | None = None
                    ) -> Conditions:
    """labels (B,) int64 -> Conditions. Rows drawn with probability ``uncond_ratio`` get the null class on both sides.

    ``uniform_draws`` (B,) replaces the random draw (for reproducing recorded runs).
    """
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D (B,), got shape {tuple(labels.shape)}")
    labels = labels.long()
    neg = torch.roll(labels, -1, dims=0)
    if uncond_ratio <= 0:
        return Conditions(labels, neg, None, torch.zeros_like(labels, dtype=torch.bool))
    if uniform_draws is None:
        uniform_draws = torch.rand(labels.shape, generator=generator, device=labels.device)
    null = uniform_draws.to(labels.device) < uncond_ratio
    pos = torch.where(null, torch.full_like(labels, null_class), labels)
    neg = torch.where(null, torch.full_like(neg, null_class), neg)
    return Conditions(pos, neg, pos == neg, null)


def micro_batch_conditions(labels: torch.Tensor, null_class: int, micro_batches: int, uncond_ratio: float = 0.0,
                           uniform_draws: torch.Tensor | None = None,
                           roll_per_micro_batch: bool = False) -> list[Conditions]:
    """The Conditions of each of ``micro_batches`` equal slices of a per-rank batch: labels rolled over the whole
    batch, or within each slice (``roll_per_micro_batch``, the originals); ``uniform_draws`` (B,) one per row."""
    B = labels.shape[0]
    if B % micro_batches:
        raise ValueError(f"batch of {B} rows is not divisible by grad_accum {micro_batches}")
    mb = B // micro_batches
    slices = [slice(j * mb, (j + 1) * mb) for j in range(micro_batches)]

    def make(rows: slice) -> Conditions:
        return make_conditions(labels[rows].cpu(), null_class, uncond_ratio,
                               uniform_draws=None if uniform_draws is None else uniform_draws[rows])

    if roll_per_micro_batch:
        return [make(rows) for rows in slices]
    whole = make(slice(None))
    return [whole.select(rows) for rows in slices]
