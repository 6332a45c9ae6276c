"""LlamaGen's GPT: Llama blocks (RMSNorm, SwiGLU, 2-D RoPE) over VQ image tokens, after T condition tokens.

``model_type='c2i'``: one class token (released c2i_*.pt, ../shared/checkpoint_layouts/llamagen_c2i_*).
``model_type='t2i'``: T = ``cls_token_num`` caption tokens from a ``Caption`` (LlamaGen/captions.py; released
t2i_XL_stage*.pt, llamagen_t2i_*). Two explicit paths, whatever the train/eval mode (the mode only switches dropout):

* ``forward(idx, cond_idx, targets)`` - teacher forcing: condition tokens + ``idx`` -> (logits (B, L, V), loss).
* ``forward_cached(x, input_pos, cache)`` - incremental decoding against a ``KVCache`` that lives outside the
  module, so generating never changes ``state_dict()`` (see LlamaGen/generate.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from cca.checkpoint import dataclass_from_dict
from cca.layers import KVCache, drop_path_or_identity
from LlamaGen.captions import Caption, CaptionEmbedder, attention_mask, caption_attention_mask


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layer: int = 32
    n_head: int = 32
    n_kv_head: Optional[int] = None
    multiple_of: int = 256            # SwiGLU hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: Optional[float] = None
    rope_base: float = 10000
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    drop_path_rate: float = 0.0
    num_classes: int = 1000
    caption_dim: int = 2048           # text-to-image: width of the caption features (FLAN-T5-XL)
    class_dropout_prob: float = 0.1   # label / caption dropout in training mode (c2i: needs the null row)
    model_type: str = "c2i"           # 'c2i' (class token) or 't2i' (caption tokens)
    vocab_size: int = 16384
    cls_token_num: int = 1            # condition tokens: 1 for c2i, caption length (120 released) for t2i
    block_size: int = 256             # image tokens per sample (grid ** 2)
    max_batch_size: int = 32          # unused (caches are sized per call); kept for compatibility
    max_seq_len: int = 2048           # unused; kept for compatibility
    null_class_row: bool = True       # class table has row ``num_classes`` (the unconditional class)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelArgs":
        return dataclass_from_dict(cls, d)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def grid_size(self) -> int:
        return int(round(self.block_size ** 0.5))

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return find_multiple(hidden, self.multiple_of)


def kv_cache_for(model: "Transformer", batch: int, max_len: int, dtype=None, device=None,
                 zeroed: bool = True) -> KVCache:
    """A cache for every layer of ``model``: ``batch`` rows, ``max_len`` positions, the weights' dtype and device."""
    a, w = model.config, model.tok_embeddings.weight
    return KVCache(a.n_layer, batch, a.n_kv_head or a.n_head, max_len, a.head_dim, dtype or w.dtype,
                   device or w.device, zeroed)


def stacked_gate_up(model: "Transformer") -> list[torch.Tensor]:
    """Each layer's SwiGLU w1 and w3 weights stacked and transposed, (dim, 2 hidden) contiguous: its gate and up
    projections as one ``x @ w`` (MKL's non-transposed product is the faster one for a few rows), each output element
    the same dot product as before. Made per generate call, never stored: the state dict is unchanged."""
    return [torch.cat([layer.feed_forward.w1.weight, layer.feed_forward.w3.weight]).t().contiguous()
            for layer in model.layers]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class FeedForward(nn.Module):
    def __init__(self, config: ModelArgs):
        super().__init__()
        hidden = config.ffn_hidden
        self.w1 = nn.Linear(config.dim, hidden, bias=False)
        self.w3 = nn.Linear(config.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, config.dim, bias=False)
        self.ffn_dropout = nn.Dropout(config.ffn_dropout_p)

    def forward(self, x: torch.Tensor, gate_up: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``gate_up``: w1's and w3's weights stacked (``stacked_gate_up``), one matmul instead of two."""
        if gate_up is None:
            return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))   # (B, S, dim)
        gate, up = (x @ gate_up).chunk(2, dim=-1)                                # (B, S, hidden) each
        return self.ffn_dropout(self.w2(F.silu(gate) * up))


def precompute_freqs_cis_2d(grid_size: int, head_dim: int, base: float = 10000, cls_token_num: int = 1
                            ) -> torch.Tensor:
    """(cls_token_num + grid**2, head_dim // 2, 2) cos/sin table: half the pairs rotate with the row index, half
    with the column index; the condition-token rows are all ZERO (the original's convention: rotated queries and
    keys of class / caption positions are exactly 0, not unrotated)."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    exponents = torch.arange(0, head_dim // 2, 2, device="cpu")[:quarter].float() / (head_dim // 2)
    inv_freq = 1.0 / (base ** exponents)                                   # (quarter,)
    angles = torch.outer(torch.arange(grid_size, device="cpu"), inv_freq)  # (grid, quarter)
    grid_angles = torch.cat([angles[:, None, :].expand(-1, grid_size, -1),
                             angles[None, :, :].expand(grid_size, -1, -1)], dim=-1)   # (grid, grid, head_dim//2)
    table = torch.stack([torch.cos(grid_angles), torch.sin(grid_angles)], dim=-1).flatten(0, 1)
    zeros = torch.zeros(cls_token_num, head_dim // 2, 2, device="cpu")
    return torch.cat([zeros, table])                                      # (T + grid**2, head_dim//2, 2)


def rope_complex(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Each adjacent pair (x[2i], x[2i+1]) as one complex number times cos + i·sin of its angle: a single kernel
    in eager mode, where a handful of strided real products would each cost a dispatch."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))       # (B, S, H, D//2) complex64
    turn = torch.view_as_complex(freqs.float().contiguous())[None, :, None]      # (1, S, 1, D//2)
    return torch.view_as_real(pairs * turn).flatten(3).type_as(x)


def rope_real(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """The same rotation in real arithmetic, (a, b) -> (a·cos - b·sin, b·cos + a·sin): what torch.compile fuses
    into one kernel (inductor generates no code for complex tensors)."""
    a, b = x.float().unflatten(-1, (-1, 2)).unbind(-1)                            # (B, S, H, D//2) each
    cos, sin = freqs.float()[None, :, None].unbind(-1)                           # (1, S, 1, D//2) each
    return torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(3).type_as(x)


def apply_rotary_emb(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x (B, S, H, D), freqs (S, D//2, 2) cos/sin -> rotated x (B, S, H, D), computed in float32."""
    if torch.compiler.is_compiling():
        return rope_real(x, freqs)
    return rope_complex(x, freqs)


def one_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None
                        ) -> torch.Tensor:
    """q (B, H, 1, D) over k, v (B, Hkv, n, D), mask None or (B, 1, 1, n) bool -> (B, H, 1, D): softmax(q kᵀ / √D) v
    as two batched matmuls, the H / Hkv query heads of a key head being the rows of one product (no repeated keys).
    In a CPU decode step (one query, a few dozen keys) this is cheaper than the SDPA kernel (benchmarks/RESULTS.md)."""
    B, H, _, D = q.shape
    Hkv = k.shape[1]
    scores = (q.reshape(B, Hkv, H // Hkv, D) * D ** -0.5) @ k.transpose(-1, -2)   # (B, Hkv, H / Hkv, n)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.float().softmax(dim=-1).type_as(v) @ v).reshape(B, H, 1, D)


class Attention(nn.Module):
    def __init__(self, config: ModelArgs):
        super().__init__()
        if config.dim % config.n_head:
            raise ValueError(f"dim {config.dim} is not divisible by n_head {config.n_head}")
        self.dim, self.n_head, self.head_dim = config.dim, config.n_head, config.head_dim
        self.n_kv_head = config.n_kv_head or config.n_head
        self.wqkv = nn.Linear(config.dim, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=False)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)
        self.attn_dropout_p = config.attn_dropout_p
        self.resid_dropout = nn.Dropout(config.resid_dropout_p)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor, kv: Optional[tuple[KVCache, int]] = None,
                input_pos: Optional[torch.Tensor] = None, kv_len: Optional[int] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """With a cache: ``kv_len`` (the filled length after this write, a Python int) attends over that prefix
        only, unmasked for one new token; without it every cache position is attended under a mask (the static
        shapes a CUDA graph needs). ``mask`` (B, 1, S, keys) bool, when given, replaces the causal masking."""
        B, S, _ = x.shape
        kv_size = self.n_kv_head * self.head_dim
        qkv = self.wqkv(x)                                                       # (B, S, dim + 2 kv_size)
        qk = qkv[..., :self.dim + kv_size].view(B, S, self.n_head + self.n_kv_head, self.head_dim)
        q, k = apply_rotary_emb(qk, freqs).transpose(1, 2).split([self.n_head, self.n_kv_head], dim=1)
        v = qkv[..., self.dim + kv_size:].view(B, S, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, S, D)
        if kv is not None:   # write this step into the static cache, attend over every filled position
            cache, layer = kv
            if kv_len is None:       # positions as a tensor: the step a CUDA graph replays has no Python ints
                k, v = cache.write_at(layer, input_pos, k, v)                    # (B, Hkv, S_max, D)
            else:   # the S positions ending at kv_len, as a slice copy (index_copy_ took 13 % of a CPU decode step)
                k, v = cache.write(layer, kv_len - S, k, v)                     # (B, Hkv, kv_len, D)
            if mask is None and (kv_len is None or (S > 1 and S != kv_len)):   # whole cache, or a later chunk
                mask = torch.arange(k.shape[2], device=x.device)[None, :] <= input_pos[:, None]   # (S, n) bool
        if S == 1 and kv_len is not None and not (self.training and self.attn_dropout_p):
            out = one_query_attention(q, k, v, mask)                             # (B, H, 1, D)
        else:
            if self.n_kv_head != self.n_head:
                k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)    # (B, H, S_k, D)
                v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and S > 1,
                                                 dropout_p=self.attn_dropout_p if self.training else 0.0)
        out = out.transpose(1, 2).contiguous().view(B, S, self.dim)
        return self.resid_dropout(self.wo(out))                                  # (B, S, dim)


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelArgs, drop_path: float):
        super().__init__()
        self.attention = Attention(config)
        self.feed_forward = FeedForward(config)
        self.attention_norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor, kv=None, input_pos=None, kv_len=None,
                mask=None, gate_up=None) -> torch.Tensor:
        h = x + self.drop_path(self.attention(self.attention_norm(x), freqs, kv, input_pos, kv_len, mask))
        return h + self.drop_path(self.feed_forward(self.ffn_norm(h), gate_up))  # (B, S, dim)


class LabelEmbedder(nn.Module):
    """Class label -> one embedding token. Row ``num_classes`` (if present) is the unconditional (null) class."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float, null_row: bool = True):
        super().__init__()
        if dropout_prob > 0 and not null_row:
            raise ValueError("class_dropout_prob > 0 needs the null class row (null_class_row=True)")
        self.embedding_table = nn.Embedding(num_classes + int(null_row), hidden_size)
        self.num_classes, self.dropout_prob, self.has_null_row = num_classes, dropout_prob, null_row

    def null_like(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.full_like(labels, self.num_classes)                         # (B,) the null class

    def embed(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels).unsqueeze(1)                         # (B, 1, dim), no dropout

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, self.null_like(labels), labels)
        return self.embed(labels)


def condition_embedder(config: ModelArgs) -> LabelEmbedder | CaptionEmbedder:
    """The class table (c2i, one token) or the caption projection (t2i, ``cls_token_num`` tokens)."""
    if config.model_type == "c2i":
        if config.cls_token_num != 1:
            raise ValueError(f"class-conditional models use one class token, got cls_token_num={config.cls_token_num}")
        return LabelEmbedder(config.num_classes, config.dim, config.class_dropout_prob, config.null_class_row)
    if config.model_type == "t2i":
        if config.cls_token_num < 1:
            raise ValueError(f"text-to-image models need cls_token_num >= 1, got {config.cls_token_num}")
        # the original always made 120 null-caption rows (it crashed for any other caption length); T rows here
        return CaptionEmbedder(config.caption_dim, config.dim, config.class_dropout_prob, config.cls_token_num)
    raise ValueError(f"model_type must be 'c2i' or 't2i', got {config.model_type!r}")


class Transformer(nn.Module):
    def __init__(self, config: ModelArgs):
        super().__init__()
        if config.grid_size ** 2 != config.block_size:
            raise ValueError(f"block_size {config.block_size} is not a square number of tokens")
        self.config = config
        self.vocab_size, self.n_layer, self.block_size = config.vocab_size, config.n_layer, config.block_size
        self.num_classes, self.model_type, self.cls_token_num = config.num_classes, config.model_type, \
            config.cls_token_num
        self.cls_embedding = condition_embedder(config)
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.tok_dropout = nn.Dropout(config.token_dropout_p)
        n = config.n_layer
        rates = [config.drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]
        self.layers = nn.ModuleList(TransformerBlock(config, r) for r in rates)
        self.norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        # a plain attribute (not a buffer): never saved, never cast to half precision, moved lazily
        self.freqs_cis = precompute_freqs_cis_2d(config.grid_size, config.head_dim, config.rope_base,
                                                 config.cls_token_num)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)) and not m.weight.is_meta:
                nn.init.normal_(m.weight, mean=0.0, std=std)
        if not self.output.weight.is_meta:
            nn.init.zeros_(self.output.weight)

    def get_fsdp_wrap_module_list(self) -> list[nn.Module]:
        return list(self.layers)

    def rope(self, positions: torch.Tensor | slice, device: torch.device) -> torch.Tensor:
        if self.freqs_cis.device != device:
            self.freqs_cis = self.freqs_cis.to(device)
        return self.freqs_cis[positions]                                         # (S, head_dim//2, 2)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return self.output(self.norm(h)).float()                                 # (B, S, V) float32

    def forward(self, idx: torch.Tensor, cond_idx: torch.Tensor | Caption, targets: Optional[torch.Tensor] = None,
                valid: Optional[torch.Tensor] = None):
        """Teacher forcing. idx (B, L) image tokens (usually block_size - 1), cond_idx (B,) classes (c2i) or a
        left-padded ``Caption`` (t2i) -> (logits (B, L + 1, V) float32 where position i predicts token i, i.e. the
        outputs from the last condition token on; mean cross-entropy vs targets, weighted by ``valid`` (B,) 0/1)."""
        if idx.shape[1] > self.block_size:
            raise ValueError(f"idx has {idx.shape[1]} tokens, more than block_size {self.block_size}")
        T = self.cls_token_num
        cond = self.cls_embedding(cond_idx)                                      # (B, T, dim)
        h = self.tok_dropout(torch.cat([cond, self.tok_embeddings(idx)], dim=1))  # (B, T + L, dim)
        freqs = self.rope(slice(0, h.shape[1]), h.device)
        mask = caption_attention_mask(cond_idx.mask, idx.shape[1]) if isinstance(cond_idx, Caption) else None
        for layer in self.layers:
            h = layer(h, freqs, mask=mask)
        logits = self._head(h[:, T - 1:])                                        # (B, 1 + L, V)
        loss = None
        if targets is not None:
            ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                 reduction="none" if valid is not None else "mean")
            if valid is not None:   # per-sample 0/1 weights
                weights = valid[:, None].expand_as(targets).reshape(-1).to(ce.dtype)
                loss = (ce * weights).sum() / weights.sum().clamp(min=1)
            else:
                loss = ce
        return logits, loss

    def forward_cached(self, x: torch.Tensor, input_pos: torch.Tensor, cache: KVCache,
                       kv_len: Optional[int] = None, gate_up: Optional[list[torch.Tensor]] = None) -> torch.Tensor:
        """x (B, S, dim) embeddings at positions ``input_pos`` (S,) -> logits (B, S, V); updates ``cache``.
        ``kv_len`` = input_pos[-1] + 1 as a Python int (``input_pos`` then the S consecutive positions before it)
        lets attention read only the filled prefix (eager decoding);
        None attends the whole cache under a mask (static shapes, for CUDA graphs; needs a zeroed cache).
        A cache with a ``key_mask`` (``KVCache.mask_prefix_keys``) masks caption padding at every step.
        ``gate_up``: ``stacked_gate_up(self)``, made once per generate call (the same numbers, fewer matmuls)."""
        h = self.tok_dropout(x)
        freqs = self.rope(input_pos, h.device)
        mask = None
        if cache.key_mask is not None:
            keys = cache.max_len if kv_len is None else kv_len
            mask = attention_mask(cache.key_mask[:, :keys], input_pos)          # (B, 1, S, keys)
        for i, layer in enumerate(self.layers):
            h = layer(h, freqs, (cache, i), input_pos, kv_len, mask, None if gate_up is None else gate_up[i])
        return self._head(h)


# name -> (n_layer, n_head, dim); parameter counts are for the 384 px class-conditional models
GPT_SIZES = {
    "GPT-B": (12, 12, 768),      # 111M
    "GPT-L": (24, 16, 1024),     # 343M
    "GPT-XL": (36, 20, 1280),    # 775M
    "GPT-XXL": (48, 24, 1536),   # 1.4B
    "GPT-XXXL": (48, 40, 2560),  # 3.9B
    "GPT-1B": (22, 32, 2048),    # 1.2B
    "GPT-3B": (24, 32, 3200),    # 3.1B
    "GPT-7B": (32, 32, 4096),    # 6.6B
    "GPT-debug": (2, 2, 32),     # tiny, for CPU tests and smoke runs
}


def _builder(name: str):
    n_layer, n_head, dim = GPT_SIZES[name]

    def build(**kwargs) -> Transformer:
        return Transformer(ModelArgs(n_layer=n_layer, n_head=n_head, dim=dim, **kwargs))
    build.__name__ = name.replace("-", "_")
    return build


GPT_models = {name: _builder(name) for name in GPT_SIZES}
