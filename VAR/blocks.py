"""Building blocks of the VAR transformer: AdaLN self-attention blocks and the AdaLN before the head.

Parameter names match the released var_d*.pth files (``blocks.3.attn.mat_qkv.weight``, ``blocks.3.ada_lin.1.bias``
...). Attention always goes through ``F.scaled_dot_product_attention`` (it picks flash / memory-efficient kernels
on GPUs by itself). The conditioning of a block (its six AdaLN vectors) depends on the class only, so the sampler
computes it once per run (``modulation``) instead of once per scale; a block given ``mods`` uses them as they are.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cca.layers import KVCache, drop_path_or_identity


class SelfAttention(nn.Module):
    def __init__(self, block_idx: int, embed_dim: int = 768, num_heads: int = 12, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, attn_l2_norm: bool = False):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.block_idx, self.num_heads, self.head_dim = block_idx, num_heads, embed_dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:   # cosine attention with a learnable per-head temperature, capped at 100
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), math.log(4.0)))
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.attn_drop = attn_drop

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None, cache: KVCache | None = None,
                start: int = 0) -> torch.Tensor:
        """x (B, L, C); ``attn_bias`` (1, 1, L, L) additive 0 / -inf in x's dtype, or None; with ``cache`` the L new
        positions are written at [start, start + L) and attend to everything before them too."""
        B, L, C = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(B, L, 3, self.num_heads, self.head_dim)  # (B,L,3,H,hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                # each (B, H, L, hd)
        if self.attn_l2_norm:
            temperature = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()   # (1, H, 1, 1)
            q = F.normalize(q, dim=-1).mul_(temperature)
            k = F.normalize(k, dim=-1)
        if cache is not None:
            k, v = cache.write(self.block_idx, start, k, v)          # (B, H, start + L, hd)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale,
                                             dropout_p=self.attn_drop if self.training else 0.0)  # (B, H, L, hd)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, L, C)))


class FFN(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class SharedAdaLin(nn.Linear):
    """One conditioning projection shared by all blocks (shared_aln): (B, D) -> (B, 1, 6, C)."""

    def forward(self, cond_BD: torch.Tensor) -> torch.Tensor:
        return super().forward(cond_BD).view(-1, 1, 6, self.weight.shape[0] // 6)


def modulate(x: torch.Tensor, scale_plus_1: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x (B, L, C) * (1 + scale) + shift, scale and shift (B, 1, C): one fused pass when no gradient is recorded
    (sampling, the frozen reference); with autograd the multiply-then-add form, because addcmul's backward makes
    two more full-size passes than mul's."""
    if torch.is_grad_enabled():
        return x.mul(scale_plus_1).add_(shift)
    return torch.addcmul(shift, x, scale_plus_1)


class AdaLNSelfAttn(nn.Module):
    """x += gamma1 * attn(LN(x) (1 + scale1) + shift1);  x += gamma2 * ffn(LN(x) (1 + scale2) + shift2)."""

    def __init__(self, block_idx: int, last_drop_p: float, embed_dim: int, cond_dim: int, shared_aln: bool,
                 norm_eps: float, num_heads: int, mlp_ratio: float = 4.0, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, attn_l2_norm: bool = False):
        super().__init__()
        self.block_idx, self.last_drop_p, self.C, self.D = block_idx, last_drop_p, embed_dim, cond_dim
        self.drop_path = drop_path_or_identity(drop_path)
        self.attn = SelfAttention(block_idx, embed_dim, num_heads, attn_drop=attn_drop, proj_drop=drop,
                                  attn_l2_norm=attn_l2_norm)
        self.ffn = FFN(embed_dim, round(embed_dim * mlp_ratio), drop=drop)
        self.ln_wo_grad = nn.LayerNorm(embed_dim, eps=norm_eps, elementwise_affine=False)
        self.shared_aln = shared_aln
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, embed_dim) / embed_dim ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * embed_dim))

    def modulation(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """cond (B, D), or SharedAdaLin's (B, 1, 6, C) -> gamma1, gamma2, 1 + scale1, 1 + scale2, shift1, shift2,
        each (B, 1, C)."""
        if self.shared_aln:
            mods = (self.ada_gss + cond).unbind(2)
        else:
            mods = self.ada_lin(cond).view(-1, 1, 6, self.C).unbind(2)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mods
        return gamma1, gamma2, scale1 + 1, scale2 + 1, shift1, shift2

    def forward(self, x: torch.Tensor, cond_BD: torch.Tensor | None, attn_bias: torch.Tensor | None,
                cache: KVCache | None = None, start: int = 0, mods: tuple[torch.Tensor, ...] | None = None
                ) -> torch.Tensor:
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mods if mods is not None else self.modulation(cond_BD)
        attn = self.attn(modulate(self.ln_wo_grad(x), scale1, shift1), attn_bias=attn_bias, cache=cache,
                         start=start)                                                  # (B, L, C)
        x = self._residual(x, attn, gamma1, in_place=True)
        return self._residual(x, self.ffn(modulate(self.ln_wo_grad(x), scale2, shift2)), gamma2, in_place=False)

    def _residual(self, x: torch.Tensor, branch: torch.Tensor, gamma: torch.Tensor, in_place: bool) -> torch.Tensor:
        """x + drop_path(branch * gamma), fused into one pass where ``modulate`` fuses (same reason). With autograd
        the gate multiplies as in the original: the attention branch in place, the MLP's branch not."""
        if not torch.is_grad_enabled() and (isinstance(self.drop_path, nn.Identity) or not self.training):
            return torch.addcmul(x, branch, gamma)
        return x + self.drop_path(branch.mul_(gamma) if in_place else branch.mul(gamma))


class AdaLNBeforeHead(nn.Module):
    def __init__(self, C: int, D: int, norm_eps: float = 1e-6):
        super().__init__()
        self.C, self.D = C, D
        self.ln_wo_grad = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * C))

    def modulation(self, cond_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)      # 2 x (B, 1, C)
        return scale + 1, shift

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor | None,
                mods: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        scale, shift = mods if mods is not None else self.modulation(cond_BD)
        return modulate(self.ln_wo_grad(x_BLC), scale, shift)                       # (B, L, C)
