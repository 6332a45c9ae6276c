"""Scale-by-scale sampling for VAR with a preallocated key/value cache.

Guidance follows the original VAR convention: ``cfg`` 0 means none; otherwise the weight ramps linearly over the
scales, t_k = cfg * k / (S - 1), and the sampled logits are (1 + t_k) * conditional - t_k * unconditional
(= ``cca.sampling.guide`` with w = 1 + t_k). With cfg == 0 the unconditional half is never built: B rows run
through the model instead of 2B, which is where guidance-free sampling saves half the cost.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cca.sampling import filter_logits, guide, sample_from_logits

from .blocks import StaticKVCache


@dataclass
class SampleTrace:
    """What one sampling run chose: per-scale token indices (B, pn^2) and the guided logits (B, pn^2, V) they
    were drawn from (a copy taken before top-k / top-p filtering)."""
    tokens: list[torch.Tensor] = field(default_factory=list)
    guided_logits: list[torch.Tensor] = field(default_factory=list)


def make_kv_caches(var, rows: int) -> list[StaticKVCache]:
    """One cache per block, each sized for the whole sequence (sum of pn^2 positions)."""
    head_dim = var.C // var.num_heads
    return [StaticKVCache(rows, var.num_heads, var.L, head_dim) for _ in var.blocks]


def resolve_labels(var, B: int, label_B: torch.Tensor | int | None, device: torch.device,
                   generator: torch.Generator | None) -> torch.Tensor:
    """(B,) int64 labels on ``device``: random classes for None, a constant for an int (negative: null class)."""
    if label_B is None:
        return torch.randint(var.num_classes, (B,), device=device, generator=generator)
    if isinstance(label_B, int):
        return torch.full((B,), var.num_classes if label_B < 0 else label_B, dtype=torch.long, device=device)
    label_B = torch.as_tensor(label_B, device=device).long().reshape(-1)
    if label_B.numel() != B:
        raise ValueError(f"label_B has {label_B.numel()} labels for B={B}")
    return label_B


def gumbel_soft_codes(logits_BlV: torch.Tensor, tau: float, codebook: torch.Tensor,
                      generator: torch.Generator | None) -> torch.Tensor:
    """Soft code vectors: softmax((logits + Gumbel noise) / tau) @ codebook -> (B, l, Cvae)."""
    noise = -torch.empty_like(logits_BlV).exponential_(generator=generator).log()   # (B, l, V)
    return ((logits_BlV + noise) / tau).softmax(dim=-1) @ codebook.unsqueeze(0)


@torch.no_grad()
def generate(var, B: int, label_B: torch.Tensor | int | None = None, *, g_seed: int | None = None,
             cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0, more_smooth: bool = False,
             trace: SampleTrace | None = None) -> torch.Tensor:
    """Sample B images; returns the final f_hat (B, Cvae, H, W). Fills ``trace`` when given."""
    device = var.lvl_1L.device
    generator = None
    if g_seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(int(g_seed))
    labels = resolve_labels(var, B, label_B, device, generator)                  # (B,)
    if int(labels.min()) < 0 or int(labels.max()) > var.num_classes:
        raise ValueError(f"labels must lie in [0, {var.num_classes}] ({var.num_classes} = unconditional)")
    guided = float(cfg) != 0.0
    rows = 2 * B if guided else B
    if guided:
        labels = torch.cat((labels, torch.full_like(labels, var.num_classes)))   # (2B,) cond then uncond
    quant, S = var.vae_quant_proxy[0], len(var.patch_nums)

    cond_BD = var.class_emb(labels)                                             # (rows, C)
    lvl_pos = var.level_pos()                                                   # (1, L, C)
    token_map = var.first_token_map(cond_BD, lvl_pos)                           # (rows, first_l, C)
    caches = make_kv_caches(var, rows)
    f_hat = cond_BD.new_zeros(B, var.Cvae, var.patch_nums[-1], var.patch_nums[-1])  # (B, Cvae, H, W)
    pos = 0
    for si, pn in enumerate(var.patch_nums):
        progress = si / var.num_stages_minus_1 if var.num_stages_minus_1 else 0.0
        pos += pn * pn
        x = var.run_blocks(token_map, cond_BD, attn_bias=None, caches=caches)   # (rows, pn^2, C)
        logits = var.get_logits(x, cond_BD)                                     # (rows, pn^2, V)
        if guided:
            t = cfg * progress
            logits = guide(logits[:B], logits[B:], 1 + t)                       # (B, pn^2, V)
        if trace is not None:
            trace.guided_logits.append(logits.clone())
        idx_Bl = sample_from_logits(logits.reshape(-1, var.V), top_k=top_k, top_p=top_p,
                                    generator=generator).view(B, pn * pn)       # (B, pn^2)
        if trace is not None:
            trace.tokens.append(idx_Bl)
        if more_smooth:   # visualisation only: soft codes (the original draws these from the filtered logits)
            tau = max(0.27 * (1 - progress * 0.95), 0.005)
            filtered = filter_logits(logits, top_k, top_p)
            h_BlC = gumbel_soft_codes(filtered.mul(1 + progress), tau, quant.embedding.weight, generator)
        else:
            h_BlC = quant.embedding(idx_Bl)                                     # (B, pn^2, Cvae)
        h_BChw = h_BlC.transpose(1, 2).reshape(B, var.Cvae, pn, pn)
        f_hat, next_map = quant.get_next_autoregressive_input(si, S, f_hat, h_BChw)
        if si != S - 1:
            pn_next = var.patch_nums[si + 1]
            words = var.word_embed(next_map.view(B, var.Cvae, -1).transpose(1, 2))   # (B, pn'^2, C)
            token_map = words + lvl_pos[:, pos:pos + pn_next * pn_next]
            if guided:
                token_map = token_map.repeat(2, 1, 1)                           # (2B, pn'^2, C)
    return f_hat


@torch.no_grad()
def autoregressive_infer_cfg(var, B: int, label_B: torch.Tensor | int | None = None, g_seed: int | None = None,
                             cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0,
                             more_smooth: bool = False) -> torch.Tensor:
    """B images in [0, 1], (B, 3, H, W). Same arguments and meaning as the original VAR method."""
    f_hat = generate(var, B, label_B, g_seed=g_seed, cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth)
    return var.vae_proxy[0].fhat_to_img(f_hat).add_(1).mul_(0.5)
