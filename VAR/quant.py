"""VAR's multi-scale residual quantiser.

An encoder feature map ``f`` (B, Cvae, H, W) with H = W = patch_nums[-1] is quantised coarse to fine: at scale k
the residual ``f - f_hat`` is area-downsampled to pn_k x pn_k, every vector snaps to its nearest codebook entry, the
code map is bicubic-upsampled back to H x W, refined by a phi convolution, and added to ``f_hat``. The phi
convolutions are shared between neighbouring scales (``share_quant_resi`` of them for all scales).

Public method names are those of the original ``VectorQuantizer2`` so existing notebooks keep working.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def phi_ticks(count: int) -> np.ndarray:
    """Positions in [0, 1] that the ``count`` phi convolutions are responsible for."""
    margin = 1 / 3 / count if count == 4 else 1 / 2 / count
    return np.linspace(margin, 1 - margin, count)


@functools.lru_cache(maxsize=None)
def phi_index(scale_index: int, num_scales: int, count: int) -> int:
    """Which of ``count`` phi convolutions scale ``scale_index`` (of ``num_scales``) uses: the nearest tick."""
    progress = scale_index / (num_scales - 1) if num_scales > 1 else 0.0
    return int(np.argmin(np.abs(phi_ticks(count) - progress)))


class Phi(nn.Conv2d):
    """h -> (1 - r) h + r conv3x3(h)."""

    def __init__(self, channels: int, quant_resi: float):
        super().__init__(channels, channels, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(quant_resi)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul(1 - self.resi_ratio) + super().forward(h).mul_(self.resi_ratio)


def _make_phi(channels: int, quant_resi: float) -> nn.Module:
    return Phi(channels, quant_resi) if abs(quant_resi) > 1e-6 else nn.Identity()


class PhiShared(nn.Module):
    """One phi for every scale (share_quant_resi == 1)."""

    def __init__(self, qresi: nn.Module):
        super().__init__()
        self.qresi = qresi

    def for_scale(self, scale_index: int, num_scales: int) -> nn.Module:
        return self.qresi


class PhiPartiallyShared(nn.Module):
    """K phis spread over the scales (share_quant_resi == K > 1); keys ``qresi_ls.{k}``."""

    def __init__(self, qresi_ls: nn.ModuleList):
        super().__init__()
        self.qresi_ls = qresi_ls

    def for_scale(self, scale_index: int, num_scales: int) -> nn.Module:
        return self.qresi_ls[phi_index(scale_index, num_scales, len(self.qresi_ls))]


class PhiNonShared(nn.ModuleList):
    """One phi per scale (share_quant_resi == 0); keys ``{k}``."""

    def for_scale(self, scale_index: int, num_scales: int) -> nn.Module:
        return self[phi_index(scale_index, num_scales, len(self))]


class MultiScaleQuantizer(nn.Module):
    def __init__(self, vocab_size: int, Cvae: int, using_znorm: bool = False, beta: float = 0.25,
                 default_qresi_counts: int = 0, v_patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
                 quant_resi: float = 0.5, share_quant_resi: int = 4):
        super().__init__()
        self.vocab_size, self.Cvae, self.using_znorm, self.beta = vocab_size, Cvae, using_znorm, beta
        self.v_patch_nums = tuple(int(p) for p in v_patch_nums)
        self.quant_resi_ratio = quant_resi
        if share_quant_resi == 0:
            count = default_qresi_counts or len(self.v_patch_nums)
            self.quant_resi = PhiNonShared([_make_phi(Cvae, quant_resi) for _ in range(count)])
        elif share_quant_resi == 1:
            self.quant_resi = PhiShared(_make_phi(Cvae, quant_resi))
        else:
            self.quant_resi = PhiPartiallyShared(nn.ModuleList(
                [_make_phi(Cvae, quant_resi) for _ in range(share_quant_resi)]))
        # per-scale codebook usage statistics of VAE training; kept only so released files load strictly
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.v_patch_nums), vocab_size))
        self.embedding = nn.Embedding(vocab_size, Cvae)

    @property
    def num_scales(self) -> int:
        return len(self.v_patch_nums)

    def phi(self, scale_index: int, num_scales: int | None = None) -> nn.Module:
        return self.quant_resi.for_scale(scale_index, num_scales or self.num_scales)

    def nearest_code(self, z_NC: torch.Tensor) -> torch.Tensor:
        """(N, Cvae) vectors -> (N,) indices of the nearest codebook rows (cosine when using_znorm)."""
        codebook = self.embedding.weight.detach()                                  # (V, Cvae)
        if self.using_znorm:
            sims = F.normalize(z_NC, dim=-1) @ F.normalize(codebook.T, dim=0)      # (N, V)
            return sims.argmax(dim=1)
        sq = z_NC.square().sum(dim=1, keepdim=True) + codebook.square().sum(dim=1)  # (N, V)
        return sq.addmm_(z_NC, codebook.T, alpha=-2).argmin(dim=1)                 # ||z - e||^2 up to rounding

    def codes_to_map(self, idx_Bl: torch.Tensor, pn: int) -> torch.Tensor:
        """(B, pn*pn) indices -> (B, Cvae, pn, pn) code vectors."""
        B = idx_Bl.shape[0]
        return self.embedding(idx_Bl).transpose(1, 2).reshape(B, self.Cvae, pn, pn)

    @torch.no_grad()
    def f_to_idxBl_or_fhat(self, f_BChw: torch.Tensor, to_fhat: bool,
                           v_patch_nums: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Quantise ``f`` scale by scale; per scale return the (B, pn*pn) indices or the running f_hat."""
        B, C, H, W = f_BChw.shape
        patch_nums = tuple(v_patch_nums or self.v_patch_nums)
        if patch_nums[-1] != H or H != W:
            raise ValueError(f"feature map is {H}x{W}; the last patch_num must equal it (got {patch_nums[-1]})")
        S = len(patch_nums)
        f_rest = f_BChw.detach().clone()                                           # (B, C, H, W)
        f_hat = torch.zeros_like(f_rest)                                           # (B, C, H, W)
        out: list[torch.Tensor] = []
        for si, pn in enumerate(patch_nums):
            last = si == S - 1
            rest = f_rest if last else F.interpolate(f_rest, size=(pn, pn), mode="area")   # (B, C, pn, pn)
            idx_N = self.nearest_code(rest.permute(0, 2, 3, 1).reshape(-1, C))      # (B*pn*pn,)
            h = self.codes_to_map(idx_N.view(B, pn * pn), pn)                      # (B, C, pn, pn)
            if not last:
                h = F.interpolate(h, size=(H, W), mode="bicubic")                  # (B, C, H, W)
            h = self.phi(si, S)(h.contiguous())
            f_hat.add_(h)
            f_rest.sub_(h)
            out.append(f_hat.clone() if to_fhat else idx_N.reshape(B, pn * pn))
        return out

    def idxBl_to_var_input(self, gt_ms_idx_Bl: list[torch.Tensor]) -> torch.Tensor | None:
        """Teacher-forcing input: for scales 1..S-1, the running f_hat of the earlier scales area-downsampled to
        that scale, flattened -> (B, L - first_l, Cvae), float32."""
        B, C = gt_ms_idx_Bl[0].shape[0], self.Cvae
        H = W = self.v_patch_nums[-1]
        S = self.num_scales
        f_hat = torch.zeros(B, C, H, W, dtype=torch.float32, device=gt_ms_idx_Bl[0].device)
        pieces = []
        for si in range(S - 1):
            pn, pn_next = self.v_patch_nums[si], self.v_patch_nums[si + 1]
            h = F.interpolate(self.codes_to_map(gt_ms_idx_Bl[si], pn), size=(H, W), mode="bicubic")  # (B,C,H,W)
            f_hat.add_(self.phi(si, S)(h))
            nxt = F.interpolate(f_hat, size=(pn_next, pn_next), mode="area")       # (B, C, pn', pn')
            pieces.append(nxt.view(B, C, -1).transpose(1, 2))                      # (B, pn'^2, C)
        return torch.cat(pieces, dim=1) if pieces else None

    def embed_to_fhat(self, ms_h_BChw: list[torch.Tensor], all_to_max_scale: bool = True,
                      last_one: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Sum per-scale code maps into f_hat (the last one, or one per scale)."""
        B = ms_h_BChw[0].shape[0]
        H = W = self.v_patch_nums[-1]
        S = self.num_scales
        per_scale: list[torch.Tensor] = []
        if all_to_max_scale:
            f_hat = ms_h_BChw[0].new_zeros(B, self.Cvae, H, W, dtype=torch.float32)
            for si in range(S):
                h = ms_h_BChw[si]
                if si < S - 1:
                    h = F.interpolate(h, size=(H, W), mode="bicubic")              # (B, C, H, W)
                f_hat.add_(self.phi(si, S)(h))
                per_scale.append(f_hat.clone())
        else:   # experimental in the original: grow f_hat scale by scale instead of working at full size
            f_hat = ms_h_BChw[0].new_zeros(B, self.Cvae, self.v_patch_nums[0], self.v_patch_nums[0],
                                           dtype=torch.float32)
            for si, pn in enumerate(self.v_patch_nums):
                f_hat = F.interpolate(f_hat, size=(pn, pn), mode="bicubic")        # (B, C, pn, pn)
                f_hat.add_(self.phi(si, S)(ms_h_BChw[si]))
                per_scale.append(f_hat)
        return per_scale[-1] if last_one else per_scale

    def get_next_autoregressive_input(self, si: int, SN: int, f_hat: torch.Tensor, h_BChw: torch.Tensor
                                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling step: add scale ``si``'s codes (B, C, pn, pn) to f_hat (in place) and return
        (f_hat, f_hat area-downsampled to the next scale) - or (f_hat, f_hat) after the last scale."""
        HW = self.v_patch_nums[-1]
        if si != SN - 1:
            h = self.phi(si, SN)(F.interpolate(h_BChw, size=(HW, HW), mode="bicubic"))   # (B, C, HW, HW)
            f_hat.add_(h)
            pn_next = self.v_patch_nums[si + 1]
            return f_hat, F.interpolate(f_hat, size=(pn_next, pn_next), mode="area")    # (B, C, pn', pn')
        f_hat.add_(self.phi(si, SN)(h_BChw))
        return f_hat, f_hat


VectorQuantizer2 = MultiScaleQuantizer   # the original class name
