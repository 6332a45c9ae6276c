"""The VAR transformer: next-scale prediction over the multi-scale token maps of a VQVAE.

Sequence layout: scale k occupies positions [begin_k, end_k) with end_k - begin_k = pn_k^2; L = sum pn_k^2.
Position 0..first_l-1 holds the class token (class embedding + pos_start); later positions hold the word-embedded
teacher-forcing input. Attention is block-causal: a position sees every position of its own and earlier scales.
The class embedding has num_classes + 1 rows; row ``num_classes`` is the unconditional (null) class.

State-dict keys and shapes equal the released var_d16/d20/d24/d30 files. The VQVAE is held outside the module
tree (in a tuple), as in the original, so no VQVAE keys appear in VAR's state dict.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from cca.layers import KVCache

from .blocks import AdaLNBeforeHead, AdaLNSelfAttn, SharedAdaLin
from .vqvae import VQVAE

# the original's switches for flash-attn / xformers / fused kernels (in its constructor calls and the fixtures'
# argument lists); attention here always goes through F.scaled_dot_product_attention, so they have no counterpart
UPSTREAM_KERNEL_SWITCHES = ("flash_if_available", "fused_if_available")


def without_kernel_switches(args: dict) -> dict:
    return {k: v for k, v in args.items() if k not in UPSTREAM_KERNEL_SWITCHES}


class VAR(nn.Module):
    def __init__(self, vae_local: VQVAE, num_classes: int = 1000, depth: int = 16, embed_dim: int = 1024,
                 num_heads: int = 16, mlp_ratio: float = 4.0, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, norm_eps: float = 1e-6, shared_aln: bool = False,
                 cond_drop_rate: float = 0.1, attn_l2_norm: bool = False,
                 patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.Cvae, self.V = vae_local.Cvae, vae_local.vocab_size
        self.depth, self.C, self.D, self.num_heads = depth, embed_dim, embed_dim, num_heads
        self.num_classes, self.cond_drop_rate, self.drop_path_rate = num_classes, cond_drop_rate, drop_path_rate
        self.patch_nums = tuple(int(p) for p in patch_nums)
        self.L = sum(pn * pn for pn in self.patch_nums)
        self.first_l = self.patch_nums[0] ** 2
        self.begin_ends: list[tuple[int, int]] = []
        start = 0
        for pn in self.patch_nums:
            self.begin_ends.append((start, start + pn * pn))
            start += pn * pn
        self.num_stages_minus_1 = len(self.patch_nums) - 1
        self.vae_proxy: tuple[VQVAE] = (vae_local,)
        self.vae_quant_proxy = (vae_local.quantize,)

        self.pos_start = nn.Parameter(torch.zeros(1, self.first_l, self.C))
        self.pos_1LC = nn.Parameter(torch.zeros(1, self.L, self.C))
        level_of_position = torch.cat([torch.full((pn * pn,), si) for si, pn in enumerate(self.patch_nums)])  # (L,)
        self.register_buffer("lvl_1L", level_of_position.view(1, self.L).clone())
        sees = level_of_position.view(self.L, 1) >= level_of_position.view(1, self.L)                       # (L, L)
        mask = torch.zeros(self.L, self.L).masked_fill_(~sees, float("-inf")).view(1, 1, self.L, self.L)
        self.register_buffer("attn_bias_for_masking", mask)

        self.word_embed = nn.Linear(self.Cvae, self.C)
        self.class_emb = nn.Embedding(num_classes + 1, self.C)
        self.lvl_embed = nn.Embedding(len(self.patch_nums), self.C)
        self.shared_ada_lin = (nn.Sequential(nn.SiLU(), SharedAdaLin(self.D, 6 * self.C)) if shared_aln
                               else nn.Identity())
        drop_path = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.ModuleList(
            AdaLNSelfAttn(block_idx=i, last_drop_p=0.0 if i == 0 else drop_path[i - 1], embed_dim=self.C,
                          cond_dim=self.D, shared_aln=shared_aln, norm_eps=norm_eps, num_heads=num_heads,
                          mlp_ratio=mlp_ratio, drop=drop_rate, attn_drop=attn_drop_rate, drop_path=drop_path[i],
                          attn_l2_norm=attn_l2_norm)
            for i in range(depth))
        self.head_nm = AdaLNBeforeHead(self.C, self.D, norm_eps=norm_eps)
        self.head = nn.Linear(self.C, self.V)
        if self.pos_1LC.device.type != "meta":
            self._init_embeddings()

    # ---------------------------------------------------------------- init
    def _init_embeddings(self) -> None:
        std = math.sqrt(1 / self.C / 3)
        for t in (self.class_emb.weight, self.pos_start, self.pos_1LC, self.lvl_embed.weight):
            nn.init.trunc_normal_(t.data, mean=0.0, std=std)

    @torch.no_grad()
    def init_weights(self, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5, init_head: float = 0.02,
                     init_std: float = 0.02, conv_std_or_gain: float = 0.02) -> None:
        """The original's initialisation (used for models trained from scratch; fine-tuning loads weights)."""
        if init_std < 0:
            init_std = (1 / self.C / 3) ** 0.5
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=init_std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=init_std)
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
                m.weight.fill_(1.0)
                m.bias.zero_()
        if init_head >= 0:
            self.head.weight.mul_(init_head)
            self.head.bias.zero_()
        self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
        self.head_nm.ada_lin[-1].bias.zero_()
        for block in self.blocks:
            block.attn.proj.weight.div_(math.sqrt(2 * self.depth))
            block.ffn.fc2.weight.div_(math.sqrt(2 * self.depth))
            if block.shared_aln:
                block.ada_gss[:, :, 2:].mul_(init_adaln)
                block.ada_gss[:, :, :2].mul_(init_adaln_gamma)
            else:
                lin = block.ada_lin[-1]
                lin.weight[2 * self.C:].mul_(init_adaln)          # scales and shifts
                lin.weight[:2 * self.C].mul_(init_adaln_gamma)    # gammas
                lin.bias.zero_()

    # ---------------------------------------------------------------- pieces shared with the sampler
    def level_pos(self) -> torch.Tensor:
        return self.lvl_embed(self.lvl_1L) + self.pos_1LC                        # (1, L, C)

    def first_token_map(self, cond_BD: torch.Tensor, lvl_pos: torch.Tensor) -> torch.Tensor:
        B = cond_BD.shape[0]
        sos = cond_BD.unsqueeze(1).expand(B, self.first_l, -1)                   # (B, first_l, C)
        return sos + self.pos_start.expand(B, self.first_l, -1) + lvl_pos[:, :self.first_l]

    def get_logits(self, h: torch.Tensor, cond_BD: torch.Tensor | None,
                   head_mods: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        return self.head(self.head_nm(h.float(), cond_BD, head_mods).float()).float()   # (B, l, V)

    def modulations(self, cond_BD: torch.Tensor) -> tuple[list[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]:
        """The AdaLN vectors of every block and of the head for classes ``cond_BD`` (B, D): they do not depend on
        the scale, so a sampling run computes them once."""
        cond = self.shared_ada_lin(cond_BD)                                      # (B, D) or (B, 1, 6, C)
        return [block.modulation(cond) for block in self.blocks], self.head_nm.modulation(cond_BD)

    def run_blocks(self, x: torch.Tensor, cond_BD: torch.Tensor | None, attn_bias: torch.Tensor | None = None,
                   cache: KVCache | None = None, start: int = 0,
                   mods: Sequence[tuple[torch.Tensor, ...]] | None = None) -> torch.Tensor:
        """x (B, l, C) through every block; with ``cache`` the l positions start at ``start``; ``mods`` from
        ``modulations`` replaces ``cond_BD``."""
        cond = None if mods is not None else self.shared_ada_lin(cond_BD)        # (B, D) or (B, 1, 6, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cond, attn_bias=attn_bias, cache=cache, start=start, mods=None if mods is None else mods[i])
        return x

    # ---------------------------------------------------------------- teacher forcing
    def forward(self, label_B: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor) -> torch.Tensor:
        """(B,) labels, (B, L - first_l, Cvae) teacher-forcing input -> (B, L, V) float32 logits.

        Labels are replaced by the null class with probability cond_drop_rate in training mode only."""
        B = x_BLCv_wo_first_l.shape[0]
        if self.training and self.cond_drop_rate > 0:
            drop = torch.rand(B, device=label_B.device) < self.cond_drop_rate
            label_B = torch.where(drop, torch.full_like(label_B, self.num_classes), label_B)
        with torch.autocast(device_type=x_BLCv_wo_first_l.device.type, enabled=False):
            cond_BD = self.class_emb(label_B)                                   # (B, C)
            lvl_pos = self.level_pos()                                          # (1, L, C)
            words = self.word_embed(x_BLCv_wo_first_l.float())                  # (B, L - first_l, C)
            x_BLC = torch.cat((self.first_token_map(cond_BD, lvl_pos), words + lvl_pos[:, self.first_l:]), dim=1)
        compute_dtype = torch.get_autocast_dtype(x_BLC.device.type) if torch.is_autocast_enabled(
            x_BLC.device.type) else x_BLC.dtype
        x_BLC = self.run_blocks(x_BLC.to(compute_dtype), cond_BD.to(compute_dtype),
                                self.attn_bias_for_masking.to(compute_dtype))
        return self.get_logits(x_BLC, cond_BD)                                  # (B, L, V)

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def autoregressive_infer_cfg(self, B: int, label_B: torch.Tensor | int | None = None,
                                 g_seed: int | None = None, cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0,
                                 more_smooth: bool = False) -> torch.Tensor:
        """Sample B images in [0, 1] (B, 3, H, W). cfg 0: guidance-free, only B rows run through the model."""
        from .sampler import autoregressive_infer_cfg
        return autoregressive_infer_cfg(self, B, label_B, g_seed=g_seed, cfg=cfg, top_k=top_k, top_p=top_p,
                                        more_smooth=more_smooth)

    def extra_repr(self) -> str:
        return f"drop_path_rate={self.drop_path_rate:g}"
