"""The VAR side of the shared CCA trainer (cca/trainer.py, docs/CONTRACTS.md).

Batches are (images (B, 3, H, W) in [-1, 1], labels (B,)) from ``VAR.data``. The frozen VQVAE turns images into
per-scale tokens (targets) and the teacher-forcing input, exactly as the original VAR trainer did.
"""
from __future__ import annotations

import torch
from torch import nn

from .vqvae import VQVAE


class VARAdapter:
    def __init__(self, vae: VQVAE, num_classes: int):
        self.vae = vae.eval().requires_grad_(False)
        self.num_classes = num_classes   # the null (unconditional) class index

    @torch.no_grad()
    def prepare(self, batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels = batch
        images = images.to(device, torch.float32, non_blocking=True)                       # (B, 3, H, W)
        labels = labels.reshape(-1).to(device, torch.long, non_blocking=True)               # (B,)
        idx_Bl = self.vae.img_to_idxBl(images)                                              # S x (B, pn^2)
        targets = torch.cat(idx_Bl, dim=1)                                                  # (B, L)
        inputs = self.vae.quantize.idxBl_to_var_input(idx_Bl)                               # (B, L - first_l, Cvae)
        return labels, inputs, targets

    def logits(self, model: nn.Module, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return model(labels, inputs)                                                        # (N, L, V)


# parameters the original VAR trainer exempted from weight decay (besides biases and other 1-D tensors)
VAR_NO_DECAY_KEYS = ("cls_token", "start_token", "task_token", "cfg_uncond", "pos_embed", "pos_1LC", "pos_start",
                     "start_pos", "lvl_embed", "gamma", "beta", "ada_gss", "moe_bias", "scale_mul")
