"""Learning-rate / weight-decay schedules and optimizer construction."""
from __future__ import annotations

import math

import torch
from torch import nn

VAR_SCHEDULES = ("lin0", "lin", "lin00", "cos", "exp")   # VAR's --sche names (plus lin<T>, e.g. lin0.3)


def _var_lr_factor(sche: str, done: float, final: float) -> float:
    """VAR's post-warmup lr factor after the fraction ``done`` of the annealing phase, ending near ``final``."""
    rest = 1 - done
    if sche in ("lin", "lin0", "exp"):
        flat = 0.05 if sche == "lin0" else 0.15
        if done < flat:
            return 1.0
        if sche == "exp":
            return math.exp((done - flat) / (1 - flat) * math.log(final))
        return final + (1 - final) * rest / (1 - flat)
    if sche == "lin00":
        return final + (1 - final) * rest
    if sche == "cos":
        return final + (1 - final) * (0.5 + 0.5 * math.cos(math.pi * done))
    flat = _lin_fraction(sche)
    if flat is not None:                       # lin<T>: linear to a midpoint over the first T, then on to final
        mid = (1 + final + (1 - final) * (1 - flat)) / 2
        return 1 + (mid - 1) * done / flat if done < flat else final + (mid - final) * rest / (1 - flat)
    raise ValueError(f"unknown schedule {sche!r}; valid: constant, {', '.join(VAR_SCHEDULES)}, lin<T> (0 < T < 1)")


def _lin_fraction(sche: str) -> float | None:
    """T of a ``lin<T>`` name, or None."""
    try:
        flat = float(sche[3:]) if sche.startswith("lin") else None
    except ValueError:
        return None
    return flat if flat is not None and 0 < flat < 1 else None


def check_schedule(schedule: str) -> None:
    """Raise ValueError for a name ``lr_wd_at`` does not know (before any work)."""
    if schedule != "constant":
        _var_lr_factor(schedule, 1.0, 0.5)


def lr_wd_at(step: int, total_steps: int, *, schedule: str, lr: float, weight_decay: float, wd_end: float | None,
             warmup_steps: float = 0, warmup_start: float = 0.005, final_lr_ratio: float = 0.01
             ) -> tuple[float, float]:
    """(lr, weight decay) at index ``step`` of a schedule ``total_steps`` long (VAR's ``lr_wd_annealing``).

    Linear warmup over ``round(warmup_steps)`` from ``warmup_start``·lr (VAR's --wp0). Then ``constant``: lr, and a
    constant weight decay. A VAR name (--sche; ``lin0`` is VAR's default): the annealing factor of the fraction
    of the post-warmup steps done, ending at ``final_lr_ratio``·lr (--wpe); the weight decay follows a half cosine
    from ``weight_decay`` to ``wd_end`` (--twde) over the whole schedule.
    """
    wp = round(warmup_steps)
    if step < wp:
        factor = warmup_start + (1 - warmup_start) * step / wp
    elif schedule == "constant":
        factor = 1.0
    else:
        factor = _var_lr_factor(schedule, (step - wp) / max(1, total_steps - 1 - wp), final_lr_ratio)
    wd = weight_decay
    if schedule != "constant" and wd_end is not None:
        frac = step / max(1, total_steps - 1)
        wd = wd_end + (weight_decay - wd_end) * (0.5 + 0.5 * math.cos(math.pi * frac))
    return lr * factor, wd


def fused_adamw_supported(device: torch.device) -> bool:
    """Whether this torch has a fused AdamW kernel for ``device`` (CUDA always; CPU from torch 2.4)."""
    if device.type == "cuda":
        return True
    try:
        torch.optim.AdamW([torch.zeros(1, device=device, requires_grad=True)], fused=True)
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


def build_adamw(model: nn.Module, *, lr: float, weight_decay: float, betas=(0.9, 0.95), eps: float = 1e-8,
                fused: bool | None = None, no_decay_keys: tuple[str, ...] = ()) -> torch.optim.AdamW:
    """AdamW with weight decay only on parameters of two or more dimensions (nanoGPT's rule), and never on
    parameters whose name contains one of ``no_decay_keys`` (e.g. VAR's position embeddings and AdaLN gates).

    Each group carries ``wd_scale`` (1 or 0) so schedules can move the decay without touching the no-decay group.
    ``fused``: True uses the fused kernel where this torch has one for the parameters' device (the originals'
    default), False never, None only on CUDA.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 and not any(k in name for k in no_decay_keys) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "wd_scale": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "wd_scale": 0.0}]
    params = decay + no_decay
    devices = {p.device for p in params}
    if fused is None:
        fused = bool(params) and all(d.type == "cuda" for d in devices)
    fused = bool(fused) and len(devices) == 1 and fused_adamw_supported(next(iter(devices)))
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)


def apply_lr_wd(optimizer: torch.optim.Optimizer, lr: float, wd: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = wd * group.get("wd_scale", 1.0)
