"""VAR's multi-scale VQVAE: encoder -> quant_conv -> multi-scale quantiser -> post_quant_conv -> decoder.

Images are NCHW in [-1, 1]. Defaults are those of the released ``vae_ch160v4096z32.pth`` except ``ch``
(pass ch=160 for it, as ``build_vae_var`` does). ``ch_mult`` / ``num_res_blocks`` / ``using_sa`` /
``using_mid_sa`` are fixed in the original; they are options here so smaller models (tests, fixtures) fit.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .encoder_decoder import Decoder, Encoder
from .quant import MultiScaleQuantizer


class VQVAE(nn.Module):
    def __init__(self, vocab_size: int = 4096, z_channels: int = 32, ch: int = 128, dropout: float = 0.0,
                 beta: float = 0.25, using_znorm: bool = False, quant_conv_ks: int = 3, quant_resi: float = 0.5,
                 share_quant_resi: int = 4, default_qresi_counts: int = 0,
                 v_patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), test_mode: bool = True,
                 ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 using_sa: bool = True, using_mid_sa: bool = True):
        super().__init__()
        self.test_mode = test_mode
        self.V = self.vocab_size = vocab_size
        self.Cvae = z_channels
        self.ch, self.ch_mult, self.num_res_blocks = ch, tuple(ch_mult), num_res_blocks
        conv_args = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, dropout=dropout,
                         in_channels=3, z_channels=z_channels, using_sa=using_sa, using_mid_sa=using_mid_sa)
        self.encoder = Encoder(double_z=False, **conv_args)
        self.decoder = Decoder(**conv_args)
        self.downsample = 2 ** (len(ch_mult) - 1)
        self.quantize = MultiScaleQuantizer(
            vocab_size=vocab_size, Cvae=z_channels, using_znorm=using_znorm, beta=beta,
            default_qresi_counts=default_qresi_counts, v_patch_nums=v_patch_nums, quant_resi=quant_resi,
            share_quant_resi=share_quant_resi)
        pad = quant_conv_ks // 2
        self.quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, stride=1, padding=pad)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, stride=1, padding=pad)
        if test_mode:
            self.eval()
            self.requires_grad_(False)

    @property
    def image_size(self) -> int:
        return self.quantize.v_patch_nums[-1] * self.downsample

    def img_to_features(self, img: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(img))                  # (B, Cvae, h, w)

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)   # (B, 3, H, W)

    def img_to_idxBl(self, inp_img_no_grad: torch.Tensor,
                     v_patch_nums: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Images -> per-scale token indices [(B, pn_k^2) int64]."""
        return self.quantize.f_to_idxBl_or_fhat(self.img_to_features(inp_img_no_grad), to_fhat=False,
                                                v_patch_nums=v_patch_nums)

    def idxBl_to_img(self, ms_idx_Bl: list[torch.Tensor], same_shape: bool,
                     last_one: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Per-scale indices -> decoded image(s) in [-1, 1]."""
        maps = [self.quantize.codes_to_map(idx, round(idx.shape[1] ** 0.5)) for idx in ms_idx_Bl]
        return self.embed_to_img(maps, all_to_max_scale=same_shape, last_one=last_one)

    def embed_to_img(self, ms_h_BChw: list[torch.Tensor], all_to_max_scale: bool,
                     last_one: bool = False) -> torch.Tensor | list[torch.Tensor]:
        f_hats = self.quantize.embed_to_fhat(ms_h_BChw, all_to_max_scale=all_to_max_scale, last_one=last_one)
        if last_one:
            return self.fhat_to_img(f_hats)
        return [self.fhat_to_img(f) for f in f_hats]

    def img_to_reconstructed_img(self, x: torch.Tensor, v_patch_nums: Sequence[int] | None = None,
                                 last_one: bool = False) -> torch.Tensor | list[torch.Tensor]:
        f_hats = self.quantize.f_to_idxBl_or_fhat(self.img_to_features(x), to_fhat=True, v_patch_nums=v_patch_nums)
        if last_one:
            return self.fhat_to_img(f_hats[-1])
        return [self.fhat_to_img(f) for f in f_hats]

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Reconstruction through all scales (no VAE-training losses here)."""
        return self.img_to_reconstructed_img(img, last_one=True)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        return super().load_state_dict(fit_usage_statistics(self, state_dict), strict=strict, assign=assign)


def fit_usage_statistics(vae: VQVAE, state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    """As the original: a file's codebook-usage statistics (``quantize.ema_vocab_hit_SV``, one row per scale) for
    another number of scales are not an error; they are replaced by the model's own (zeros on the meta device).
    Returns ``state_dict`` itself when nothing needs replacing, else a patched copy."""
    key, own = "quantize.ema_vocab_hit_SV", vae.quantize.ema_vocab_hit_SV
    if key not in state_dict or state_dict[key].shape[0] == own.shape[0]:
        return state_dict
    patched = dict(state_dict)
    patched[key] = own if own.device.type != "meta" else torch.zeros(own.shape, dtype=own.dtype)
    return patched
