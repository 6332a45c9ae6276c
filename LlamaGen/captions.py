"""Text conditions of LlamaGen's text-to-image GPT: T5 caption features in LlamaGen's LEFT-padded layout.

A T2I condition is a ``Caption(emb, mask)``: ``emb`` (B, T, D) float T5 encoder features, ``mask`` (B, T) bool,
True at real caption tokens. T = the model's ``cls_token_num`` (120 for the released models), D = ``caption_dim``
(2048, FLAN-T5-XL). The real tokens sit at the END of the T rows, in their order, with zero rows before them
(``left_pad``), so the last caption position, whose output predicts image token 0, is always a real token.

Caption keys are masked for every query (pad rows attend only to themselves) and carry no position: the model's
rotary table is zero at caption positions (see LlamaGen/gpt.py).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn as nn


class Caption(NamedTuple):
    emb: torch.Tensor    # (B, T, D) float, left-padded T5 features
    mask: torch.Tensor   # (B, T) bool, True = a real caption token

    @classmethod
    def cat(cls, parts: Sequence["Caption"]) -> "Caption":
        """Rows of ``parts`` one after the other (e.g. conditional rows, then unconditional ones)."""
        return cls(torch.cat([p.emb for p in parts]), torch.cat([p.mask for p in parts]))

    def where(self, rows: torch.Tensor, other: "Caption") -> "Caption":
        """Row i of ``other`` where ``rows[i]`` (B,) bool, else row i of this caption."""
        return Caption(torch.where(rows[:, None, None], other.emb, self.emb),
                       torch.where(rows[:, None], other.mask, self.mask))


def left_pad(emb: torch.Tensor, mask: torch.Tensor, tokens: Optional[int] = None) -> Caption:
    """Right-padded T5 output -> LlamaGen's layout: the first min(n, T) real rows moved to the end of ``tokens``
    (default: the input length) rows, in order, zeros before them.

    emb (B, S, D) with the n real rows of each caption first, mask (B, S) bool (True for those n rows). This is
    what the original's sampling script does with the tokenizer output and what its dataset does with the stored
    rows (truncating to the first T when n > T); pass ``mask`` all True for stored rows.
    """
    B, S, D = emb.shape
    T = S if tokens is None else tokens
    mask = mask.bool()
    n = mask.sum(dim=1)                                                         # (B,)
    if not torch.equal(mask, torch.arange(S, device=mask.device)[None, :] < n[:, None]):
        raise ValueError("left_pad: mask must be right-padded (True for the first n positions of each caption)")
    source = torch.arange(T, device=emb.device)[None, :] - (T - n.clamp(max=T))[:, None]   # (B, T) row read
    real = source >= 0                                                          # (B, T)
    rows = emb.gather(1, source.clamp(min=0)[..., None].expand(B, T, D))       # (B, T, D)
    return Caption(torch.where(real[..., None], rows, torch.zeros((), dtype=emb.dtype, device=emb.device)), real)


def attention_mask(key_mask: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
    """(B, n) keys that may be attended, (S,) query positions -> (B, 1, S, n) bool, True = may attend: causal,
    masked keys off for every query, and each query's own position always on (so left-pad rows see themselves)."""
    keys = torch.arange(key_mask.shape[1], device=key_mask.device)[None, :]    # (1, n)
    causal = keys <= query_pos[:, None]                                         # (S, n)
    own = keys == query_pos[:, None]                                            # (S, n)
    return (causal & key_mask[:, None, None, :]) | own                          # (B, 1, S, n)


def caption_attention_mask(caption_mask: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """The mask of a caption (B, T) followed by ``n_tokens`` image tokens: (B, 1, T + n, T + n) bool (what the
    original's T2I dataset builds, before the model drops its last row and column)."""
    B, T = caption_mask.shape
    keys = torch.cat([caption_mask.bool(), caption_mask.new_ones(B, n_tokens, dtype=torch.bool)], dim=1)
    return attention_mask(keys, torch.arange(T + n_tokens, device=caption_mask.device))


class CaptionProjection(nn.Module):
    """fc2(GELU_tanh(fc1(x))), no biases: caption_dim -> dim (the checkpoints' ``cls_embedding.cap_proj``)."""

    def __init__(self, caption_dim: int, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(caption_dim, dim, bias=False)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))                                  # (B, T, dim)


class CaptionEmbedder(nn.Module):
    """Caption -> T embedding tokens. ``uncond_embedding`` (T, caption_dim) is the learned null caption: a
    persistent buffer (saved, cast with the model, never in ``parameters()``, so never trained), as released."""

    def __init__(self, caption_dim: int, dim: int, dropout_prob: float, tokens: int):
        super().__init__()
        self.cap_proj = CaptionProjection(caption_dim, dim)
        self.register_buffer("uncond_embedding", torch.randn(tokens, caption_dim) / caption_dim ** 0.5)
        self.dropout_prob, self.tokens, self.caption_dim = dropout_prob, tokens, caption_dim

    def null_like(self, cond: Caption) -> Caption:
        """The unconditional caption for each row of ``cond``: all T rows of ``uncond_embedding`` under the row's
        OWN mask (as the original's sampler and caption dropout), so only its last n rows are visible."""
        B = cond.emb.shape[0]
        return Caption(self.uncond_embedding.to(cond.emb.dtype).expand(B, -1, -1), cond.mask)

    def check(self, cond: Caption) -> None:
        """One-line ValueError unless ``cond`` is a (B, T, caption_dim) float caption with a (B, T) bool mask."""
        if not isinstance(cond, Caption):
            raise ValueError(f"a text-to-image GPT takes a Caption(emb, mask) condition, got {type(cond).__name__}")
        want = (self.tokens, self.caption_dim)
        if cond.emb.dim() != 3 or tuple(cond.emb.shape[1:]) != want or not cond.emb.is_floating_point():
            raise ValueError(f"caption features must be float (B, {want[0]}, {want[1]}), got "
                             f"{cond.emb.dtype} {tuple(cond.emb.shape)}")
        if cond.mask.dtype != torch.bool or tuple(cond.mask.shape) != tuple(cond.emb.shape[:2]):
            raise ValueError(f"caption mask must be bool {tuple(cond.emb.shape[:2])}, got {cond.mask.dtype} "
                             f"{tuple(cond.mask.shape)}")

    def embed(self, cond: Caption) -> torch.Tensor:
        """No dropout: (B, T, caption_dim) features -> (B, T, dim) tokens."""
        return self.cap_proj(cond.emb.to(self.cap_proj.fc1.weight.dtype))

    def forward(self, cond: Caption) -> torch.Tensor:
        """In training mode each row becomes the null caption with probability ``dropout_prob`` (mask kept)."""
        self.check(cond)
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(cond.emb.shape[0], device=cond.emb.device) < self.dropout_prob
            cond = cond.where(drop, self.null_like(cond))
        return self.embed(cond)


# ------------------------------------------------------------------------------------------ LlamaGen's T2I data
def listed_records(data_path: str | os.PathLike, start: int = 0, end: Optional[int] = None,
                   flag: str = "--data-path") -> list[tuple[dict, str, int]]:
    """LlamaGen's T2I listing: (record, file stem, line index) for every line of the ``.jsonl`` files among the
    sorted entries [start, end] (inclusive, as --data-start / --data-end) of ``data_path``. Codes and caption
    features of a record are stored as ``<stem>/<line index>.npy``. One-line ValueError on a missing folder,
    a line that is not JSON, or no records."""
    root = Path(data_path)
    if not root.is_dir():
        raise ValueError(f"{flag} {data_path}: folder not found")
    names = sorted(os.listdir(root))
    names = names[start:] if end is None else names[start:end + 1]
    records = []
    for name in (n for n in names if n.endswith(".jsonl")):
        with open(root / name) as f:
            for line_idx, line in enumerate(f):
                try:
                    records.append((json.loads(line), name.split(".")[0], line_idx))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{flag}: {name} line {line_idx + 1} is not JSON ({e.msg})") from None
    if not records:
        raise ValueError(f"{flag} {data_path}: no records in .jsonl files (one JSON object per line expected)")
    return records


def record_file(root: str | os.PathLike, stem: str, line_idx: int) -> Path:
    """Where the codes / caption features of record ``line_idx`` of ``<stem>.jsonl`` live under ``root``."""
    return Path(root) / stem / f"{line_idx}.npy"
