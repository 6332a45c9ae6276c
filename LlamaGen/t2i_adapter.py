"""The text-to-image side of the shared CCA trainer: captions as conditions, through the c2i adapter interface.

The trainer builds its conditions from integer ids (cca/conditions.py): negatives = the ids rolled by one, null
rows = the id ``num_classes``, and a negative equal to its positive counts as positive. ``prepare`` therefore hands
it one id per row: the index of the FIRST row of the batch whose caption (features and mask) is identical to this
row's. Rolling these ids rolls the captions, features and masks together, and two rows with the same caption get
the same id, so a rolled caption equal to the row's own counts as positive, as identical labels do. ``logits``
turns ids back into a ``Caption``; a null id becomes the model's learned unconditional caption embedding under the
row's own mask (``CaptionEmbedder.null_like``, as LlamaGen's caption dropout and its sampler use it). The row is
found by its image tokens among the batch's; rows with identical image tokens share the first one's mask.
"""
from __future__ import annotations

import torch
from torch import nn

from LlamaGen.captions import Caption


def same_caption_ids(caption: Caption) -> torch.Tensor:
    """(B,) int64: for each row, the first row index with an identical caption (every feature and mask entry)."""
    B = caption.emb.shape[0]
    rows = torch.cat([caption.emb.flatten(1).float(), caption.mask.float()], dim=1)   # (B, T*D + T)
    _, group = torch.unique(rows, dim=0, return_inverse=True)                          # (B,) group of each row
    first = torch.full((B,), B, dtype=torch.long, device=rows.device)
    first = first.scatter_reduce(0, group, torch.arange(B, device=rows.device), reduce="amin")
    return first[group]


def _embedder(model: nn.Module):
    """The caption embedder of a bare, DDP-wrapped or FSDP-sharded GPT."""
    return getattr(model, "module", model).cls_embedding


class T2IAdapter:
    """Batches of (codes (B, L) int64, caption features (B, T, D), caption mask (B, T) bool) from
    ``CaptionCodeDataset``; teacher forcing on a text-to-image GPT."""

    def __init__(self, batch_rows: int):
        self.num_classes = batch_rows   # ids of a batch lie in [0, batch_rows); this one is the null caption
        self._caption: Caption | None = None
        self._inputs: torch.Tensor | None = None

    def prepare(self, batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        codes, emb, mask = batch
        if codes.shape[0] > self.num_classes:
            raise ValueError(f"T2IAdapter: a batch of {codes.shape[0]} rows, made for at most {self.num_classes}")
        codes = codes.reshape(codes.shape[0], -1).to(device, torch.long, non_blocking=True)     # (B, L)
        self._caption = Caption(emb.to(device, non_blocking=True), mask.to(device, torch.bool))  # (B, T, D), (B, T)
        self._inputs = codes[:, :-1]                                                          # (B, L-1)
        return same_caption_ids(self._caption), self._inputs, codes

    def captions(self, model: nn.Module, ids: torch.Tensor, inputs: torch.Tensor) -> Caption:
        """ids (n,) from the trainer (``num_classes`` = null), inputs (n, L-1) the rows' image tokens -> Caption."""
        table = self._caption
        null = ids == self.num_classes                                                        # (n,)
        rows = ids.clamp(max=table.emb.shape[0] - 1)                                          # null: any row
        chosen = Caption(table.emb[rows], table.mask[rows])
        if not bool(null.any()):
            return chosen
        match = (inputs[:, None, :] == self._inputs[None, :, :]).all(dim=2)                  # (n, B)
        if not bool(match[null].any(dim=1).all()):
            raise ValueError("T2IAdapter: a null-caption row's image tokens are not in the prepared batch")
        own = match.int().argmax(dim=1)                                                       # (n,) first match
        null_caption = _embedder(model).null_like(Caption(table.emb[own], table.mask[own]))
        return chosen.where(null, null_caption)

    def logits(self, model: nn.Module, ids: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        logits, _ = model(inputs, self.captions(model, ids, inputs))                         # (n, L, V)
        return logits
