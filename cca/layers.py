"""Model pieces both families use: stochastic depth, the preallocated key/value cache of a sampling run, and the
nearest-neighbour 2x upsampling convolution of their image decoders."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's residual branch with probability p and scale the kept ones
    by 1 / (1 - p) (the timm form both originals use: the mask is divided, then multiplied in)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)   # (B, 1, ...)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:g}"


def drop_path_or_identity(p: float) -> nn.Module:
    return DropPath(p) if p > 0 else nn.Identity()


class KVCache:
    """Keys and values of every attention layer for one sampling run, allocated once at full length. Not a module:
    sampling never changes a model's ``state_dict()``.

    ``k``, ``v``: (n_layer, rows, heads, max_len, head_dim). Without ``dtype`` the storage is allocated at the first
    write, with the dtypes of the keys and values written (they differ under autocast). ``write`` copies S new
    positions of one layer to [start, start + S) and returns that layer's filled prefix; ``write_at`` copies them to
    the positions held in a tensor and returns the whole layer (static shapes, as a CUDA graph needs; read it under
    a mask, from a zeroed cache). ``key_mask`` (rows, max_len) bool, when set (``mask_prefix_keys``), marks the keys
    each row may attend (LlamaGen's padded captions).
    """

    def __init__(self, n_layer: int, rows: int, heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None, zeroed: bool = False):
        self.shape = (n_layer, rows, heads, max_len, head_dim)
        self.zeroed = zeroed
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.key_mask: torch.Tensor | None = None
        if dtype is not None:
            self._allocate(dtype, dtype, device)

    def _allocate(self, k_dtype: torch.dtype, v_dtype: torch.dtype, device) -> None:
        make = torch.zeros if self.zeroed else torch.empty
        self.k = make(self.shape, dtype=k_dtype, device=device)     # (n_layer, rows, H, max_len, hd)
        self.v = make(self.shape, dtype=v_dtype, device=device)

    @property
    def rows(self) -> int:
        return self.shape[1]

    @property
    def max_len(self) -> int:
        return self.shape[3]

    def _check(self, k: torch.Tensor, v: torch.Tensor, end: int) -> None:
        if self.k is None:
            self._allocate(k.dtype, v.dtype, k.device)
        if k.shape[0] != self.rows or end > self.max_len:
            raise ValueError(f"KV cache holds {self.rows} rows x {self.max_len} positions; got {k.shape[0]} rows "
                             f"up to position {end}")

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v (rows, H, S, hd) -> this layer's keys and values (rows, H, start + S, hd), views of the cache."""
        end = start + k.shape[2]
        self._check(k, v, end)
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def write_at(self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v (rows, H, S, hd) at the S ``positions`` -> the whole layer (rows, H, max_len, hd)."""
        self._check(k, v, 0)
        self.k[layer].index_copy_(2, positions, k.to(self.k.dtype))
        self.v[layer].index_copy_(2, positions, v.to(self.v.dtype))
        return self.k[layer], self.v[layer]

    def mask_prefix_keys(self, prefix_mask: torch.Tensor) -> None:
        """(rows, T) bool: keys at the False positions of [0, T) are never attended; later keys always may be."""
        rows, T = prefix_mask.shape
        self.key_mask = torch.ones(rows, self.max_len, dtype=torch.bool, device=prefix_mask.device)
        self.key_mask[:, :T] = prefix_mask

    def first_rows(self, n: int) -> "KVCache":
        """A view on rows [0, n) sharing storage (LlamaGen: guidance stops after ``cfg_interval``)."""
        view = KVCache(self.shape[0], n, *self.shape[2:], zeroed=self.zeroed)
        view.k, view.v = self.k[:, :n], self.v[:, :n]
        view.key_mask = None if self.key_mask is None else self.key_mask[:n]
        return view


# rows of the 3x3 kernel that land on source offsets (-1, 0) for even output rows and (0, +1) for odd ones
_PHASE_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],
                            [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])          # (phase, source offset, tap)


def nearest_upsample_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(interpolate(x, scale_factor=2, mode="nearest"))`` for a 3x3, stride-1, padding-1 ``conv``, computed on
    the low-resolution input: each of the four output phases sees a 2x2 source window, so one 2x2 convolution with
    4x the output channels does the work (4/9 of the multiply-adds), and the phases are interleaved afterwards.
    Equal to the upsample-then-convolve form up to float rounding (taps that read the same source pixel are summed
    in the weights first)."""
    B, _, H, W = x.shape
    w = conv.weight                                                                  # (Co, Ci, 3, 3)
    Co = w.shape[0]
    taps = _PHASE_TAPS.to(w.device, w.dtype)
    w4 = torch.einsum("aik,ocks,bjs->oabcij", taps, w, taps).reshape(4 * Co, w.shape[1], 2, 2)
    bias = None if conv.bias is None else conv.bias.repeat_interleave(4)
    y = F.conv2d(F.pad(x, (1, 1, 1, 1)), w4, bias).contiguous()                     # (B, 4Co, H+1, W+1)
    # output pixel (2i + a, 2j + b) is phase (a, b) at source window (i + a, j + b): an offset linear in a, b, i, j,
    # so one strided view reads all four phases in output order and one copy interleaves them
    S = (H + 1) * (W + 1)
    phases = y.as_strided((B, Co, H, 2, W, 2), (4 * Co * S, 4 * S, W + 1, 2 * S + W + 1, 1, S + 1),
                          y.storage_offset())                                         # (B, Co, i, a, j, b)
    return phases.reshape(B, Co, 2 * H, 2 * W)                                       # (B, Co, 2H, 2W)
