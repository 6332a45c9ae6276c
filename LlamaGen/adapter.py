"""The LlamaGen side of the shared CCA trainer (cca/trainer.py, docs/CONTRACTS.md)."""
from __future__ import annotations

import torch
from torch import nn


class LlamaGenAdapter:
    """Batches of (codes (B, L) int64, labels (B,) int64) from ``CodeDataset``; teacher forcing on the GPT."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes   # the null (unconditional) class index

    def prepare(self, batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        codes, labels = batch
        codes = codes.reshape(codes.shape[0], -1).to(device, torch.long, non_blocking=True)   # (B, L)
        labels = labels.reshape(-1).to(device, torch.long, non_blocking=True)                # (B,)
        return labels, codes[:, :-1], codes             # inputs (B, L-1): the class token predicts codes[:, 0]

    def logits(self, model: nn.Module, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        logits, _ = model(inputs, labels)                                                    # (N, L, V)
        return logits
