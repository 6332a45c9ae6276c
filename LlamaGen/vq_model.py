"""LlamaGen's image tokenizer: a convolutional VQ autoencoder with an L2-normalised (cosine) codebook.

Module and parameter names follow the released ``vq_ds16_c2i.pt`` exactly (see
../shared/checkpoint_layouts/llamagen_vq_ds16_c2i.json), so the original weights load strictly.

    model = VQ_models["VQ-16"]()                       # ds16, 16384 x 8 codebook
    quant, losses, (_, _, codes) = model.encode(x)     # x (B, 3, H, W) in [-1, 1]; codes (B*h*w,) int64
    images = model.decode_code(codes, [B, 8, h, w])    # (B, 3, H, W), roughly [-1, 1], not clamped
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from cca.checkpoint import dataclass_from_dict
from cca.layers import nearest_upsample_conv

CODEBOOK_USAGE_WINDOW = 65536   # length of the released checkpoints' ``quantize.codebook_used`` buffer


@dataclass
class VQModelArgs:
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    codebook_show_usage: bool = True
    commit_loss_beta: float = 0.25
    entropy_loss_ratio: float = 0.0
    encoder_ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    decoder_ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    z_channels: int = 256
    dropout_p: float = 0.0
    ch: int = 128                 # base width of encoder and decoder (not a knob in the original's ModelArgs)
    num_res_blocks: int = 2
    norm_type: str = "group"

    @classmethod
    def from_dict(cls, d: dict) -> "VQModelArgs":
        return dataclass_from_dict(cls, d)


def swish(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x) as one fused kernel, in place: every caller hands it a fresh normalisation output."""
    return F.silu(x, inplace=True)


def make_norm(channels: int, norm_type: str = "group") -> nn.Module:
    if norm_type == "group":
        return nn.GroupNorm(num_groups=min(32, channels), num_channels=channels, eps=1e-6, affine=True)
    if norm_type == "batch":
        return nn.SyncBatchNorm(channels)
    raise ValueError(f"norm_type must be 'group' or 'batch', got {norm_type!r}")


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, norm_type: str = "group"):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = make_norm(in_channels, norm_type)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = make_norm(out_channels, norm_type)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))                      # (B, C_out, H, W)
        h = self.conv2(self.dropout(swish(self.norm2(h))))        # (B, C_out, H, W)
        skip = self.nin_shortcut(x) if self.in_channels != self.out_channels else x
        return h.add_(skip)


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions, with separate 1x1 q / k / v convolutions."""

    def __init__(self, channels: int, norm_type: str = "group"):
        super().__init__()
        self.norm = make_norm(channels, norm_type)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(B, C, H * W).transpose(1, 2)        # (B, HW, C)
        k = self.k(h).reshape(B, C, H * W)                        # (B, C, HW)
        v = self.v(h).reshape(B, C, H * W)                        # (B, C, HW)
        attn = torch.softmax(torch.bmm(q, k) * C ** -0.5, dim=2)  # (B, HW_query, HW_key)
        out = torch.bmm(v, attn.transpose(1, 2))                  # (B, C, HW_query)
        return x + self.proj_out(out.reshape(B, C, H, W))


class Downsample(nn.Module):
    """Stride-2 3x3 convolution after padding one zero row/column at the bottom/right."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))                  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling and a 3x3 conv, computed at the low resolution (cca.layers)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nearest_upsample_conv(x, self.conv)                  # (B, C, 2H, 2W)


class Encoder(nn.Module):
    def __init__(self, in_channels: int = 3, ch: int = 128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 norm_type: str = "group", dropout: float = 0.0, z_channels: int = 256):
        super().__init__()
        self.num_res_blocks = num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        widths = [ch] + [ch * m for m in ch_mult]
        last = len(ch_mult) - 1
        self.conv_blocks = nn.ModuleList()
        for level in range(len(ch_mult)):
            block = nn.Module()
            c_in, c_out = widths[level], widths[level + 1]
            block.res = nn.ModuleList(ResnetBlock(c_in if i == 0 else c_out, c_out, dropout, norm_type)
                                      for i in range(num_res_blocks))
            # attention only at the lowest resolution, after every residual block there
            n_attn = num_res_blocks if level == last else 0
            block.attn = nn.ModuleList(AttnBlock(c_out, norm_type) for _ in range(n_attn))
            if level != last:
                block.downsample = Downsample(c_out)
            self.conv_blocks.append(block)
        c = widths[-1]
        self.mid = nn.ModuleList([ResnetBlock(c, c, dropout, norm_type), AttnBlock(c, norm_type),
                                  ResnetBlock(c, c, dropout, norm_type)])
        self.norm_out = make_norm(c, norm_type)
        self.conv_out = nn.Conv2d(c, z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)                                       # (B, ch, H, W)
        for block in self.conv_blocks:
            for i, res in enumerate(block.res):
                h = res(h)
                if len(block.attn) > 0:
                    h = block.attn[i](h)
            if hasattr(block, "downsample"):
                h = block.downsample(h)
        for layer in self.mid:
            h = layer(h)
        return self.conv_out(swish(self.norm_out(h)))             # (B, z_channels, h, w)


class Decoder(nn.Module):
    def __init__(self, z_channels: int = 256, ch: int = 128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 norm_type: str = "group", dropout: float = 0.0, out_channels: int = 3):
        super().__init__()
        self.num_res_blocks = num_res_blocks
        c = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, c, 3, 1, 1)
        self.mid = nn.ModuleList([ResnetBlock(c, c, dropout, norm_type), AttnBlock(c, norm_type),
                                  ResnetBlock(c, c, dropout, norm_type)])
        self.conv_blocks = nn.ModuleList()
        levels = list(reversed(range(len(ch_mult))))            # lowest resolution first
        for level in levels:
            block = nn.Module()
            c_out = ch * ch_mult[level]
            block.res = nn.ModuleList(ResnetBlock(c if i == 0 else c_out, c_out, dropout, norm_type)
                                      for i in range(num_res_blocks + 1))
            n_attn = num_res_blocks + 1 if level == len(ch_mult) - 1 else 0
            block.attn = nn.ModuleList(AttnBlock(c_out, norm_type) for _ in range(n_attn))
            if level != 0:
                block.upsample = Upsample(c_out)
            self.conv_blocks.append(block)
            c = c_out
        self.norm_out = make_norm(c, norm_type)
        self.conv_out = nn.Conv2d(c, out_channels, 3, 1, 1)

    @property
    def last_layer(self) -> torch.Tensor:
        return self.conv_out.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)                                       # (B, ch*ch_mult[-1], h, w)
        for layer in self.mid:
            h = layer(h)
        for block in self.conv_blocks:
            for i, res in enumerate(block.res):
                h = res(h)
                if len(block.attn) > 0:
                    h = block.attn[i](h)
            if hasattr(block, "upsample"):
                h = block.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))             # (B, 3, H, W)


class VectorQuantizer(nn.Module):
    """Nearest-codebook-row quantiser; with ``l2_norm`` both latents and rows are unit-normalised (cosine match)."""

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25, entropy_loss_ratio: float = 0.0,
                 l2_norm: bool = True, show_usage: bool = True):
        super().__init__()
        self.n_e, self.e_dim, self.beta = n_e, e_dim, beta
        self.entropy_loss_ratio, self.l2_norm, self.show_usage = entropy_loss_ratio, l2_norm, show_usage
        self.embedding = nn.Embedding(n_e, e_dim)
        with torch.no_grad():
            self.embedding.weight.uniform_(-1.0 / n_e, 1.0 / n_e)
            if l2_norm:
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, p=2, dim=-1))
        if show_usage:   # rolling window of recently used indices; saved in checkpoints, used only in training
            self.register_buffer("codebook_used", torch.zeros(CODEBOOK_USAGE_WINDOW))

    def codebook(self) -> torch.Tensor:
        w = self.embedding.weight                                 # (n_e, e_dim)
        return F.normalize(w, p=2, dim=-1) if self.l2_norm else w

    def forward(self, z: torch.Tensor):
        """z (B, C, h, w) -> (z_q (B, C, h, w), (vq_loss, commit_loss, entropy_loss, usage), (None, None, idx))."""
        z = z.permute(0, 2, 3, 1).contiguous()                    # (B, h, w, C)
        if self.l2_norm:
            z = F.normalize(z, p=2, dim=-1)
        flat = z.reshape(-1, self.e_dim)                          # (N, C), N = B*h*w
        emb = self.codebook()                                     # (n_e, C)
        # squared distance |z|^2 + |e|^2 - 2 z.e (for unit vectors the argmin is the cosine argmax)
        dist = (flat ** 2).sum(1, keepdim=True) + (emb ** 2).sum(1) - 2 * flat @ emb.t()   # (N, n_e)
        indices = torch.argmin(dist, dim=1)                       # (N,) int64
        z_q = emb[indices].view(z.shape)                          # (B, h, w, C)
        vq_loss = commit_loss = entropy_loss = None
        usage = 0
        if self.training:
            if self.show_usage:
                n = indices.shape[0]
                self.codebook_used[:-n] = self.codebook_used[n:].clone()
                self.codebook_used[-n:] = indices.to(self.codebook_used.dtype)
                usage = len(torch.unique(self.codebook_used)) / self.n_e
            vq_loss = torch.mean((z_q - z.detach()) ** 2)
            commit_loss = self.beta * torch.mean((z_q.detach() - z) ** 2)
            entropy_loss = self.entropy_loss_ratio * entropy_regulariser(-dist)
        z_q = z + (z_q - z).detach()                              # straight-through gradient
        return z_q.permute(0, 3, 1, 2), (vq_loss, commit_loss, entropy_loss, usage), (None, None, indices)

    def get_codebook_entry(self, indices: torch.Tensor, shape=None, channel_first: bool = True) -> torch.Tensor:
        """indices (any shape, B*h*w entries) -> rows; with ``shape`` = [B, C, h, w] (channel_first) -> (B, C, h, w)."""
        z_q = self.codebook()[indices]                            # (..., C)
        if shape is None:
            return z_q
        if channel_first:
            B, C, h, w = shape
            return z_q.reshape(B, h, w, C).permute(0, 3, 1, 2).contiguous()   # (B, C, h, w)
        return z_q.view(shape)


def entropy_regulariser(affinity: torch.Tensor, temperature: float = 0.01) -> torch.Tensor:
    """Per-sample entropy minus entropy of the average assignment (encourages confident, diverse code use)."""
    logits = affinity.reshape(-1, affinity.shape[-1]) / temperature   # (N, n_e)
    probs = torch.softmax(logits, dim=-1)
    log_probs = torch.log_softmax(logits + 1e-5, dim=-1)
    mean_probs = probs.mean(dim=0)                                # (n_e,)
    avg_entropy = -(mean_probs * torch.log(mean_probs + 1e-5)).sum()
    sample_entropy = -(probs * log_probs).sum(-1).mean()
    return sample_entropy - avg_entropy


class VQModel(nn.Module):
    def __init__(self, config: Optional[VQModelArgs] = None):
        super().__init__()
        config = config or VQModelArgs()
        self.config = config
        self.encoder = Encoder(ch=config.ch, ch_mult=config.encoder_ch_mult, num_res_blocks=config.num_res_blocks,
                               norm_type=config.norm_type, dropout=config.dropout_p, z_channels=config.z_channels)
        self.decoder = Decoder(z_channels=config.z_channels, ch=config.ch, ch_mult=config.decoder_ch_mult,
                               num_res_blocks=config.num_res_blocks, norm_type=config.norm_type,
                               dropout=config.dropout_p)
        self.quantize = VectorQuantizer(config.codebook_size, config.codebook_embed_dim, config.commit_loss_beta,
                                        config.entropy_loss_ratio, config.codebook_l2_norm,
                                        config.codebook_show_usage)
        self.quant_conv = nn.Conv2d(config.z_channels, config.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.codebook_embed_dim, config.z_channels, 1)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.config.encoder_ch_mult) - 1)

    def pre_quant(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))                   # (B, embed_dim, h, w)

    def encode(self, x: torch.Tensor):
        """x (B, 3, H, W) in [-1, 1] -> (quant (B, D, h, w), losses, (None, None, codes (B*h*w,) int64))."""
        return self.quantize(self.pre_quant(x))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))          # (B, 3, H, W)

    def decode_code(self, code_b: torch.Tensor, shape=None, channel_first: bool = True) -> torch.Tensor:
        """codes (B, h*w) or (B*h*w,) with ``shape`` = [B, embed_dim, h, w] -> images (B, 3, H, W), not clamped."""
        return self.decode(self.quantize.get_codebook_entry(code_b, shape, channel_first))

    def forward(self, x: torch.Tensor):
        quant, losses, _ = self.encode(x)
        return self.decode(quant), losses


def VQ_8(**kwargs) -> VQModel:
    return VQModel(VQModelArgs(encoder_ch_mult=[1, 2, 2, 4], decoder_ch_mult=[1, 2, 2, 4], **kwargs))


def VQ_16(**kwargs) -> VQModel:
    return VQModel(VQModelArgs(encoder_ch_mult=[1, 1, 2, 2, 4], decoder_ch_mult=[1, 1, 2, 2, 4], **kwargs))


VQ_models = {"VQ-16": VQ_16, "VQ-8": VQ_8}
