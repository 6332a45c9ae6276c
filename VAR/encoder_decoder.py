"""Convolutional encoder and decoder of VAR's multi-scale VQVAE.

Module and parameter names follow the released ``vae_ch160v4096z32.pth`` (``encoder.down.0.block.1.conv1.weight``
...), so released files load strictly. Widths are ``ch * ch_mult[level]``; every level but the last halves
(encoder) or doubles (decoder) the resolution. Self-attention sits in the deepest level (``using_sa``) and in the
middle (``using_mid_sa``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cca.layers import nearest_upsample_conv


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(32, channels), num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, plus a 1x1 shortcut when the width changes."""

    def __init__(self, *, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.nin_shortcut = (nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels
                             else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x), inplace=True))                 # (B, Cout, H, W)
        h = self.conv2(self.dropout(F.silu(self.norm2(h), inplace=True)))   # (B, Cout, H, W)
        return h.add_(self.nin_shortcut(x))


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.C = channels
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, C, H * W)      # (B, 3, C, HW)
        q, k, v = qkv.transpose(2, 3).unsqueeze(2).unbind(1)       # each (B, 1, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)              # (B, 1, HW, C), scale C^-1/2
        out = out.squeeze(1).transpose(1, 2).reshape(B, C, H, W)   # (B, C, H, W)
        return x + self.proj_out(out)


class Downsample2x(nn.Module):
    """Stride-2 3x3 conv after padding one pixel on the right and bottom only."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))                  # (B, C, H/2, W/2)


class Upsample2x(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 conv (computed at the low resolution, see
    ``cca.layers.nearest_upsample_conv``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nearest_upsample_conv(x, self.conv)                 # (B, C, 2H, 2W)


class Level(nn.Module):
    """One resolution level: residual blocks, optional attention after each, optional resampler."""

    def __init__(self, widths: Sequence[tuple[int, int]], dropout: float, with_attn: bool,
                 resample: nn.Module | None, resample_name: str):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(in_channels=i, out_channels=o, dropout=dropout) for i, o in widths)
        self.attn = nn.ModuleList(AttnBlock(o) for _, o in widths) if with_attn else nn.ModuleList()
        self.resample_name = resample_name
        if resample is not None:
            setattr(self, resample_name, resample)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        resample = getattr(self, self.resample_name, None)
        return resample(h) if resample is not None else h


class Middle(nn.Module):
    def __init__(self, channels: int, dropout: float, using_mid_sa: bool):
        super().__init__()
        self.block_1 = ResnetBlock(in_channels=channels, out_channels=channels, dropout=dropout)
        self.attn_1 = AttnBlock(channels) if using_mid_sa else nn.Identity()
        self.block_2 = ResnetBlock(in_channels=channels, out_channels=channels, dropout=dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, *, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 dropout: float = 0.0, in_channels: int = 3, z_channels: int, double_z: bool = False,
                 using_sa: bool = True, using_mid_sa: bool = True):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.downsample_ratio = 2 ** (self.num_resolutions - 1)
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)
        self.down = nn.ModuleList()
        width = ch
        for level, mult in enumerate(ch_mult):
            out = ch * mult
            widths = [(width if i == 0 else out, out) for i in range(num_res_blocks)]
            last = level == self.num_resolutions - 1
            self.down.append(Level(widths, dropout, with_attn=last and using_sa,
                                   resample=None if last else Downsample2x(out), resample_name="downsample"))
            width = out
        self.mid = Middle(width, dropout, using_mid_sa)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, 2 * z_channels if double_z else z_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)                                        # (B, ch, H, W)
        for level in self.down:
            h = level(h)                                           # (B, ch*mult, H/2^l, W/2^l)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h), inplace=True))   # (B, z, H/ds, W/ds)


class Decoder(nn.Module):
    def __init__(self, *, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 dropout: float = 0.0, in_channels: int = 3, z_channels: int,
                 using_sa: bool = True, using_mid_sa: bool = True):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        width = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, width, kernel_size=3, stride=1, padding=1)
        self.mid = Middle(width, dropout, using_mid_sa)
        levels: list[Level] = []
        for level in reversed(range(self.num_resolutions)):   # built deepest first, stored shallowest first
            out = ch * ch_mult[level]
            widths = [(width if i == 0 else out, out) for i in range(num_res_blocks + 1)]
            deepest = level == self.num_resolutions - 1
            levels.insert(0, Level(widths, dropout, with_attn=deepest and using_sa,
                                   resample=Upsample2x(out) if level != 0 else None, resample_name="upsample"))
            width = out
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))                              # (B, ch*mult[-1], h, w)
        for level in reversed(self.up):
            h = level(h)                                           # doubles H, W except at level 0
        return self.conv_out(F.silu(self.norm_out(h), inplace=True))   # (B, 3, H, W)
