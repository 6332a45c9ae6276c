"""Learning-rate / weight-decay schedules and optimizer construction."""
from __future__ import annotations

import math

import torch
from torch import nn


def lr_wd_at(step: int, total_steps: int, *, schedule: str, lr: float, weight_decay: float, wd_end: float | None,
             warmup_steps: float = 0, warmup_start: float = 0.005, final_lr_ratio: float = 0.01
             ) -> tuple[float, float]:
    """(lr, weight decay) for optimizer step ``step`` of ``total_steps``.

    constant: linear warmup over ``warmup_steps`` from ``warmup_start``·lr, then ``lr``; weight decay constant.
    var (VAR's "lin0"): same warmup, then flat for the first 5% of the remaining steps, then linear decay to
    ``final_lr_ratio``·lr (VAR's ``--wpe``); weight decay follows a half cosine from ``weight_decay`` to ``wd_end``
    (VAR's ``--twde``) over the whole run.
    """
    wp = round(warmup_steps)
    if step < wp:
        factor = warmup_start + (1 - warmup_start) * step / wp
    elif schedule == "constant":
        factor = 1.0
    elif schedule == "var":
        done = (step - wp) / max(1, total_steps - 1 - wp)
        flat = 0.05
        factor = 1.0 if done < flat else final_lr_ratio + (1 - final_lr_ratio) * (1 - done) / (1 - flat)
    else:
        raise ValueError(f"unknown schedule {schedule!r}; valid: constant, var")
    wd = weight_decay
    if schedule == "var" and wd_end is not None:
        frac = step / max(1, total_steps - 1)
        wd = wd_end + (weight_decay - wd_end) * (0.5 + 0.5 * math.cos(math.pi * frac))
    return lr * factor, wd


def build_adamw(model: nn.Module, *, lr: float, weight_decay: float, betas=(0.9, 0.95), eps: float = 1e-8,
                fused: bool | None = None, no_decay_keys: tuple[str, ...] = ()) -> torch.optim.AdamW:
    """AdamW with weight decay only on parameters of two or more dimensions (nanoGPT's rule), and never on
    parameters whose name contains one of ``no_decay_keys`` (e.g. VAR's position embeddings and AdaLN gates).

    Each group carries ``wd_scale`` (1 or 0) so schedules can move the decay without touching the no-decay group.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 and not any(k in name for k in no_decay_keys) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "wd_scale": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "wd_scale": 0.0}]
    if fused is None:
        fused = all(p.is_cuda for p in decay + no_decay) and len(decay + no_decay) > 0
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=bool(fused) or None)


def apply_lr_wd(optimizer: torch.optim.Optimizer, lr: float, wd: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = wd * group.get("wd_scale", 1.0)
