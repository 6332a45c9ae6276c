"""Scale-by-scale sampling for VAR with a preallocated key/value cache, eagerly or as one CUDA graph per scale.

Guidance follows the original VAR convention: ``cfg`` 0 means none; otherwise the weight ramps linearly over the
scales, t_k = cfg * k / (S - 1), and the sampled logits are (1 + t_k) * conditional - t_k * unconditional
(= ``cca.sampling.guide`` with w = 1 + t_k). With cfg == 0 the unconditional half is never built: B rows run
through the model instead of 2B, which is where guidance-free sampling saves half the cost.

One step of scale k (the transformer over the scale's token map, writing the cache, then the head) is the same
code on both paths (``ScaleSteps``): eagerly, or captured once per scale as a CUDA graph over static buffers and
replayed by every later run of the same shape (``VAR.graphs.GraphedScaleSteps``). The AdaLN vectors depend on the
classes only and are computed once per run, not once per scale.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cca.layers import KVCache
from cca.sampling import filter_logits, guide, sample_from_logits


@dataclass
class SampleTrace:
    """What one sampling run chose: per-scale token indices (B, pn^2) and the guided logits (B, pn^2, V) they
    were drawn from (a copy taken before top-k / top-p filtering)."""
    tokens: list[torch.Tensor] = field(default_factory=list)
    guided_logits: list[torch.Tensor] = field(default_factory=list)


def make_kv_cache(var, rows: int) -> KVCache:
    """One cache for every block, sized for the whole sequence (sum of pn^2 positions)."""
    return KVCache(len(var.blocks), rows, var.num_heads, var.L, var.C // var.num_heads)


class ScaleSteps:
    """The transformer part of each scale step, eagerly: ``start(cond_BD)`` once per run, then
    ``step(si, token_map (rows, pn^2, C)) -> logits (rows, pn^2, V)`` for si = 0, 1, ..."""

    def __init__(self, var, rows: int):
        self.var, self.cache = var, make_kv_cache(var, rows)

    def start(self, cond_BD: torch.Tensor) -> None:
        self.mods, self.head_mods = self.var.modulations(cond_BD)

    def step(self, si: int, token_map: torch.Tensor) -> torch.Tensor:
        var = self.var
        x = var.run_blocks(token_map, None, cache=self.cache, start=var.begin_ends[si][0], mods=self.mods)
        return var.get_logits(x, None, self.head_mods)                           # (rows, pn^2, V)


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


def _steps(var, rows: int, cuda_graph: bool | None) -> ScaleSteps:
    device = var.lvl_1L.device
    if cuda_graph is None:
        cuda_graph = device.type == "cuda"
    if cuda_graph and device.type == "cuda":
        from .graphs import graphed_scale_steps
        return graphed_scale_steps(var, rows)
    return ScaleSteps(var, rows)


def _codes(var, logits: torch.Tensor, idx_Bl: torch.Tensor, progress: float, more_smooth: bool, top_k: int,
           top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """(B, pn^2, Cvae) code vectors of the chosen tokens, or soft ones (visualisation only; the original draws
    these from the filtered logits)."""
    quant = var.vae_quant_proxy[0]
    if not more_smooth:
        return quant.embedding(idx_Bl)
    tau = max(0.27 * (1 - progress * 0.95), 0.005)
    filtered = filter_logits(logits, top_k, top_p)
    return gumbel_soft_codes(filtered.mul(1 + progress), tau, quant.embedding.weight, generator)


@torch.no_grad()
def generate(var, B: int, label_B: torch.Tensor | int | None = None, *, g_seed: int | None = None,
             cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0, more_smooth: bool = False,
             trace: SampleTrace | None = None, cuda_graph: bool | None = None) -> torch.Tensor:
    """Sample B images; returns the final f_hat (B, Cvae, H, W). Fills ``trace`` when given. ``cuda_graph``
    (default: on for CUDA) replays each scale's step as a CUDA graph."""
    device = var.lvl_1L.device
    generator = None
    if g_seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(int(g_seed))
    labels = resolve_labels(var, B, label_B, device, generator)                  # (B,)
    if int(labels.min()) < 0 or int(labels.max()) > var.num_classes:
        raise ValueError(f"labels must lie in [0, {var.num_classes}] ({var.num_classes} = unconditional)")
    guided = float(cfg) != 0.0
    if guided:
        labels = torch.cat((labels, torch.full_like(labels, var.num_classes)))   # (2B,) cond then uncond
    quant, S = var.vae_quant_proxy[0], len(var.patch_nums)

    cond_BD = var.class_emb(labels)                                             # (rows, C)
    lvl_pos = var.level_pos()                                                   # (1, L, C)
    token_map = var.first_token_map(cond_BD, lvl_pos)                           # (rows, first_l, C)
    steps = _steps(var, labels.shape[0], cuda_graph)
    steps.start(cond_BD)
    f_hat = cond_BD.new_zeros(B, var.Cvae, var.patch_nums[-1], var.patch_nums[-1])  # (B, Cvae, H, W)
    for si, pn in enumerate(var.patch_nums):
        progress = si / var.num_stages_minus_1 if var.num_stages_minus_1 else 0.0
        logits = steps.step(si, token_map)                                      # (rows, pn^2, V)
        if guided:
            logits = guide(logits[:B], logits[B:], 1 + cfg * progress)          # (B, pn^2, V)
        if trace is not None:
            trace.guided_logits.append(logits.clone())
        idx_Bl = sample_from_logits(logits.reshape(-1, var.V), top_k=top_k, top_p=top_p,
                                    generator=generator).view(B, pn * pn)       # (B, pn^2)
        if trace is not None:
            trace.tokens.append(idx_Bl)
        h_BlC = _codes(var, logits, idx_Bl, progress, more_smooth, top_k, top_p, generator)   # (B, pn^2, Cvae)
        h_BChw = h_BlC.transpose(1, 2).reshape(B, var.Cvae, pn, pn)
        f_hat, next_map = quant.get_next_autoregressive_input(si, S, f_hat, h_BChw)
        if si != S - 1:
            begin, end = var.begin_ends[si + 1]
            words = var.word_embed(next_map.view(B, var.Cvae, -1).transpose(1, 2))   # (B, pn'^2, C)
            token_map = words + lvl_pos[:, begin:end]
            if guided:
                token_map = token_map.repeat(2, 1, 1)                           # (2B, pn'^2, C)
    return f_hat


@torch.no_grad()
def autoregressive_infer_cfg(var, B: int, label_B: torch.Tensor | int | None = None, g_seed: int | None = None,
                             cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0, more_smooth: bool = False,
                             cuda_graph: bool | None = None) -> torch.Tensor:
    """B images in [0, 1], (B, 3, H, W). Same arguments and meaning as the original VAR method."""
    f_hat = generate(var, B, label_B, g_seed=g_seed, cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth,
                     cuda_graph=cuda_graph)
    return var.vae_proxy[0].fhat_to_img(f_hat).add_(1).mul_(0.5)
