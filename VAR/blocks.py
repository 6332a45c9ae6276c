"""Building blocks of the VAR transformer: AdaLN self-attention blocks, the AdaLN before the head, and the
preallocated key/value cache used by the sampler.

Parameter names match the released var_d*.pth files (``blocks.3.attn.mat_qkv.weight``, ``blocks.3.ada_lin.1.bias``
...). Attention always goes through ``F.scaled_dot_product_attention`` (it picks flash / memory-efficient kernels
on GPUs by itself); ``flash_if_available`` / ``fused_if_available`` are accepted for compatibility only.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's residual branch with probability p (rescale the rest)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)   # (B, 1, 1)
        return x * mask.div_(keep)


class StaticKVCache:
    """Keys and values of one attention layer for a whole sampling run, allocated once at full length.

    ``append`` writes the new positions and returns views of everything written so far; nothing is concatenated.
    """

    def __init__(self, rows: int, num_heads: int, max_len: int, head_dim: int):
        self.shape = (rows, num_heads, max_len, head_dim)
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, _, new, _ = k.shape                                   # k, v: (rows, H, new, hd)
        if self.k is None or self.k.dtype != k.dtype or self.k.device != k.device:
            self.k = k.new_empty(self.shape)                        # (rows, H, max_len, hd)
            self.v = v.new_empty(self.shape)
        end = self.length + new
        if rows != self.shape[0] or end > self.shape[2]:
            raise ValueError(f"KV cache holds {self.shape[0]} rows x {self.shape[2]} positions; "
                             f"got {rows} rows up to position {end}")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]               # (rows, H, end, hd)


class SelfAttention(nn.Module):
    def __init__(self, block_idx: int, embed_dim: int = 768, num_heads: int = 12, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, attn_l2_norm: bool = False, flash_if_available: bool = True):
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
        self.flash_if_available = flash_if_available

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None,
                kv_cache: StaticKVCache | None = None) -> torch.Tensor:
        B, L, C = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(B, L, 3, self.num_heads, self.head_dim)  # (B,L,3,H,hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                # each (B, H, L, hd)
        if self.attn_l2_norm:
            temperature = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()   # (1, H, 1, 1)
            q = F.normalize(q, dim=-1).mul(temperature)
            k = F.normalize(k, dim=-1)
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)                              # (B, H, cached + L, hd)
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)                         # (1, 1, L, L) additive 0 / -inf
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale,
                                             dropout_p=self.attn_drop if self.training else 0.0)  # (B, H, L, hd)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, L, C)))


class FFN(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0, fused_if_available: bool = True):
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


class AdaLNSelfAttn(nn.Module):
    """x += gamma1 * attn(LN(x) (1 + scale1) + shift1);  x += gamma2 * ffn(LN(x) (1 + scale2) + shift2)."""

    def __init__(self, block_idx: int, last_drop_p: float, embed_dim: int, cond_dim: int, shared_aln: bool,
                 norm_eps: float, num_heads: int, mlp_ratio: float = 4.0, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, attn_l2_norm: bool = False,
                 flash_if_available: bool = False, fused_if_available: bool = True):
        super().__init__()
        self.block_idx, self.last_drop_p, self.C, self.D = block_idx, last_drop_p, embed_dim, cond_dim
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.attn = SelfAttention(block_idx, embed_dim, num_heads, attn_drop=attn_drop, proj_drop=drop,
                                  attn_l2_norm=attn_l2_norm, flash_if_available=flash_if_available)
        self.ffn = FFN(embed_dim, round(embed_dim * mlp_ratio), drop=drop, fused_if_available=fused_if_available)
        self.ln_wo_grad = nn.LayerNorm(embed_dim, eps=norm_eps, elementwise_affine=False)
        self.shared_aln = shared_aln
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, embed_dim) / embed_dim ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * embed_dim))

    def forward(self, x: torch.Tensor, cond_BD: torch.Tensor, attn_bias: torch.Tensor | None,
                kv_cache: StaticKVCache | None = None) -> torch.Tensor:
        if self.shared_aln:   # cond_BD is already SharedAdaLin's (B, 1, 6, C)
            mods = (self.ada_gss + cond_BD).unbind(2)                              # 6 x (B, 1, C)
        else:
            mods = self.ada_lin(cond_BD).view(-1, 1, 6, self.C).unbind(2)          # 6 x (B, 1, C)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mods
        h = self.ln_wo_grad(x).mul(scale1 + 1).add_(shift1)                        # (B, L, C)
        x = x + self.drop_path(self.attn(h, attn_bias=attn_bias, kv_cache=kv_cache).mul_(gamma1))
        h = self.ln_wo_grad(x).mul(scale2 + 1).add_(shift2)                        # (B, L, C)
        return x + self.drop_path(self.ffn(h).mul(gamma2))


class AdaLNBeforeHead(nn.Module):
    def __init__(self, C: int, D: int, norm_eps: float = 1e-6):
        super().__init__()
        self.C, self.D = C, D
        self.ln_wo_grad = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * C))

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)     # 2 x (B, 1, C)
        return self.ln_wo_grad(x_BLC).mul(scale + 1).add_(shift)                   # (B, L, C)
