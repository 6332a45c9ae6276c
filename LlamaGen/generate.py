"""Class- and caption-conditional sampling for the LlamaGen GPT with a static, preallocated KV cache.

The cache is a ``KVCache`` object created per call and dropped afterwards: the model's ``state_dict()`` is the same
before and after generating (the original registered its caches as persistent buffers on the model).

Guidance uses LlamaGen's convention: ``cfg_scale == 1`` (or below) is guidance-free and runs only the B conditional
rows; ``cfg_scale > 1`` adds B unconditional rows (class ``num_classes``, or for a text-to-image GPT the learned
null caption under each prompt's own mask) and mixes u + s·(c − u).
``cfg_interval = k >= 0`` stops guiding after decode step k (from then on only the B conditional rows run).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from cca.sampling import filter_logits, guide, sample_from_logits
from LlamaGen.captions import Caption
from LlamaGen.gpt import KVCache, Transformer, kv_cache_for, stacked_gate_up

LogitsHook = Callable[[int, torch.Tensor], None]   # (step, (B, V) logits handed to the sampler) -> None


def sample_next(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                sample_logits: bool = True, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(B, V) logits -> (B,) int64: temperature, then top-k / top-p, then a draw (or the argmax)."""
    if sample_logits:
        return sample_from_logits(logits, top_k=top_k, top_p=top_p, temperature=temperature, generator=generator)
    return filter_logits(logits / max(temperature, 1e-5), top_k, top_p).argmax(dim=-1)


def _check_inputs(model: Transformer, cond: torch.Tensor | Caption, max_new_tokens: int, cfg_scale: float) -> None:
    if model.model_type == "t2i":
        _check_caption(model, cond)
    elif not isinstance(cond, torch.Tensor) or cond.dim() != 1 or cond.shape[0] == 0:
        raise ValueError(f"cond must be (B,) class indices with B >= 1, got {_describe(cond)}")
    if not 1 <= max_new_tokens <= model.block_size:
        raise ValueError(f"max_new_tokens must be in [1, {model.block_size}] (block_size), got {max_new_tokens}")
    if cfg_scale > 1.0 and model.model_type == "c2i" and not model.cls_embedding.has_null_row:
        raise ValueError("cfg_scale > 1 needs the unconditional class row, which this model has no weights for")


def _describe(cond) -> str:
    return f"shape {tuple(cond.shape)}" if isinstance(cond, torch.Tensor) else type(cond).__name__


def _check_caption(model: Transformer, cond: Caption) -> None:
    model.cls_embedding.check(cond)
    if cond.emb.shape[0] == 0:
        raise ValueError("cond must hold at least one caption")
    if not bool(cond.mask[:, -1].all()):   # right padding would predict token 0 from a pad row
        raise ValueError("captions must be LEFT-padded (real tokens at the end, mask[:, -1] True); convert T5 "
                         "output with LlamaGen.captions.left_pad")


def _batch(cond: torch.Tensor | Caption) -> tuple[int, torch.device]:
    lead = cond.emb if isinstance(cond, Caption) else cond
    return lead.shape[0], lead.device


def _with_null(model: Transformer, cond: torch.Tensor | Caption) -> torch.Tensor | Caption:
    """The B conditional rows, then B unconditional ones (the null class, or the null caption)."""
    null = model.cls_embedding.null_like(cond)
    return Caption.cat([cond, null]) if isinstance(cond, Caption) else torch.cat([cond, null])


def _cache_for(model: Transformer, rows: torch.Tensor | Caption, max_len: int, device: torch.device,
               zeroed: bool) -> KVCache:
    """The KV cache of the R rows; for captions it also masks their padding keys at every step."""
    cache = kv_cache_for(model, _batch(rows)[0], max_len, device=device, zeroed=zeroed)
    if isinstance(rows, Caption):
        cache.mask_prefix_keys(rows.mask)
    return cache


def _guided(logits: torch.Tensor, batch: int, cfg_scale: float) -> torch.Tensor:
    if logits.shape[0] == batch:              # guidance-free rows only
        return logits
    cond_logits, uncond_logits = logits[:batch], logits[batch:]                 # (B, V) each
    return guide(cond_logits, uncond_logits, cfg_scale)


class GraphedDecodeStep:
    """One decode step (R rows, one token, static KV cache) captured as a CUDA graph and replayed per token.

    A decode step of a small GPT at moderate batch is a few hundred tiny kernels, so eager decoding is bound by
    launch overhead and running 2B rows costs about as much as B: the saving of guidance-free sampling would not
    show. Replaying a graph removes that overhead. Inputs live in static buffers (``token``, ``pos``); the cache is
    written in place by the captured kernels.
    """

    def __init__(self, model: Transformer, cache: KVCache, rows: int, first_pos: int):
        dev = cache.k.device
        self.model, self.cache = model, cache
        self.token = torch.zeros(rows, 1, dtype=torch.long, device=dev)               # (R, 1)
        self.pos = torch.full((1,), first_pos, dtype=torch.long, device=dev)          # (1,)
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):      # warm-up: writes position first_pos, which step one overwrites
            for _ in range(2):
                self._step()
        torch.cuda.current_stream(dev).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._step()                                                # (R, V)

    def _step(self) -> torch.Tensor:
        x = self.model.tok_embeddings(self.token)                                     # (R, 1, dim)
        return self.model.forward_cached(x, self.pos, self.cache)[:, -1]

    def __call__(self, token: torch.Tensor, pos: int) -> torch.Tensor:
        self.token.copy_(token)
        self.pos.fill_(pos)
        self.graph.replay()
        return self.logits


def _use_graph(cuda_graph: Optional[bool], device: torch.device, switches_rows: bool) -> bool:
    if cuda_graph is None:
        cuda_graph = device.type == "cuda"
    return bool(cuda_graph) and device.type == "cuda" and not switches_rows


@torch.no_grad()
def generate(model: Transformer, cond: torch.Tensor, max_new_tokens: int, cfg_scale: float = 1.0,
             cfg_interval: int = -1, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             sample_logits: bool = True, *, generator: Optional[torch.Generator] = None,
             logits_hook: Optional[LogitsHook] = None, cuda_graph: Optional[bool] = None) -> torch.Tensor:
    """cond (B,) class indices, or a left-padded ``Caption`` for a text-to-image GPT -> (B, max_new_tokens) int64
    image tokens in raster order.

    ``logits_hook(step, logits)`` sees the last-position (guided) logits handed to the sampler at every step.
    ``cuda_graph`` (default: on for CUDA) replays the decode step as a CUDA graph (``GraphedDecodeStep``); it is
    not used when ``cfg_interval`` changes the number of rows mid-way.
    """
    _check_inputs(model, cond, max_new_tokens, cfg_scale)
    B, device = _batch(cond)
    use_cfg = cfg_scale > 1.0
    rows = _with_null(model, cond) if use_cfg else cond                        # R = B or 2B rows
    T = model.cls_token_num
    switches = use_cfg and -1 < cfg_interval < max_new_tokens - 2
    use_graph = max_new_tokens > 1 and _use_graph(cuda_graph, torch.device(device), switches)
    # the eager steps read only the filled prefix, so their cache needs no zeroing; the graph attends it all
    cache = _cache_for(model, rows, T + max_new_tokens, device, zeroed=use_graph)
    seq = torch.empty(B, max_new_tokens, dtype=torch.long, device=device)
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, sample_logits=sample_logits,
                    generator=generator)

    # prefill: the class token or the caption tokens at positions [0, T)
    cond_emb = model.cls_embedding.embed(rows)                                 # (R, T, dim)
    logits = model.forward_cached(cond_emb, torch.arange(T, device=device), cache, kv_len=T)[:, -1]   # (R, V)
    logits = _guided(logits, B, cfg_scale)
    if logits_hook is not None:
        logits_hook(0, logits)
    token = sample_next(logits, **sampling)                                     # (B,)
    seq[:, 0] = token

    pos = torch.tensor([T], device=device)
    # w1|w3 of each layer stacked for this call: one matmul fewer per layer and step (~4 % of a CPU decode step);
    # not on a GPU, where the graph replays the step and the copy would cost half the layers' weights in memory
    gate_up = stacked_gate_up(model) if cache.k.device.type == "cpu" else None
    graphed = GraphedDecodeStep(model, cache, cache.k.shape[1], T) if use_graph else None
    for i in range(max_new_tokens - 1):
        if graphed is not None:
            x = token[:, None]
            logits = graphed(torch.cat([x, x]) if use_cfg else x, T + i)                   # (R, V)
            logits = _guided(logits, B, cfg_scale)
            if logits_hook is not None:
                logits_hook(i + 1, logits)
            token = sample_next(logits, **sampling)
            seq[:, i + 1] = token
            continue
        if use_cfg and cfg_interval > -1 and i > cfg_interval and cache.k.shape[1] != B:
            cache = cache.first_rows(B)        # guidance is over: keep decoding the conditional rows only
        x = token[:, None]                                                      # (B, 1)
        if cache.k.shape[1] != B:
            x = torch.cat([x, x])                                               # (2B, 1)
        logits = model.forward_cached(model.tok_embeddings(x), pos, cache, T + i + 1, gate_up)[:, -1]   # (R, V)
        logits = _guided(logits, B, cfg_scale)
        if logits_hook is not None:
            logits_hook(i + 1, logits)
        token = sample_next(logits, **sampling)
        seq[:, i + 1] = token
        pos += 1
    return seq


@torch.no_grad()
def generate_uncached(model: Transformer, cond: torch.Tensor, max_new_tokens: int, cfg_scale: float = 1.0,
                      cfg_interval: int = -1, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                      sample_logits: bool = True, *, generator: Optional[torch.Generator] = None,
                      logits_hook: Optional[LogitsHook] = None) -> torch.Tensor:
    """Same contract as ``generate`` but recomputes the whole prefix with the teacher-forcing forward each step
    (a slow reference for tests and benchmarks)."""
    _check_inputs(model, cond, max_new_tokens, cfg_scale)
    B, device = _batch(cond)
    use_cfg = cfg_scale > 1.0
    seq = torch.empty(B, 0, dtype=torch.long, device=device)
    for i in range(max_new_tokens):
        guiding = use_cfg and not (cfg_interval > -1 and i - 1 > cfg_interval)
        rows = _with_null(model, cond) if guiding else cond
        prefix = torch.cat([seq, seq]) if guiding else seq                      # (R, i)
        logits = _guided(model(prefix, rows)[0][:, -1], B, cfg_scale)           # (B, V)
        if logits_hook is not None:
            logits_hook(i, logits)
        token = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                            sample_logits=sample_logits, generator=generator)
        seq = torch.cat([seq, token[:, None]], dim=1)
    return seq
