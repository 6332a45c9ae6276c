"""LlamaGen generation timings on a random-weight GPT (CPU by default), measured in one run.

    python benchmarks/bench_llamagen.py            # dim 384, 6 layers; CFG at 1024 rows, KV cache at 16 rows x 32
    python benchmarks/bench_llamagen.py --dim 64 --n-layer 2 --cfg-batch 4 --kv-tokens 8 --json

Reports three ratios:
* guidance-free / CFG time: ``cfg_scale 1`` runs B rows per step, CFG 2B rows (CCA's halving of sampling
  cost): 0.5 where compute dominates, higher where a fixed per-step cost (weight reads, dispatch) does;
* cached / uncached time: the static KV cache against recomputing the whole prefix every step;
* 2T / T cached time: generating twice as many tokens (about 2 when each step costs the same).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import torch

from common import paired_times  # noqa: E402
from LlamaGen.generate import generate, generate_uncached  # noqa: E402
from LlamaGen.gpt import ModelArgs, Transformer  # noqa: E402


def bench_model(dim: int = 384, n_layer: int = 6, n_head: int = 6, vocab_size: int = 1024, block_size: int = 64,
                num_classes: int = 10, seed: int = 0) -> Transformer:
    """A random-weight class-conditional GPT in eval mode (no dropout)."""
    torch.manual_seed(seed)
    model = Transformer(ModelArgs(dim=dim, n_layer=n_layer, n_head=n_head, vocab_size=vocab_size,
                                  block_size=block_size, num_classes=num_classes, token_dropout_p=0.0,
                                  resid_dropout_p=0.0, ffn_dropout_p=0.0, class_dropout_prob=0.0))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def _paired(fn_a: Callable[[], object], fn_b: Callable[[], object], repeats: int,
            device: torch.device | None) -> dict:
    sync = (lambda: torch.cuda.synchronize(device)) if device is not None and device.type == "cuda" else None
    return paired_times(fn_a, fn_b, repeats, sync=sync)


def _cond(model: Transformer, batch: int) -> torch.Tensor:
    return torch.arange(batch, device=model.output.weight.device) % model.num_classes


def guidance_ratio(model: Transformer, batch: int, tokens: int, cfg_scale: float = 4.0, repeats: int = 3) -> dict:
    cond = _cond(model, batch)
    r = _paired(lambda: generate(model, cond, tokens, cfg_scale=1.0),
                lambda: generate(model, cond, tokens, cfg_scale=cfg_scale), repeats, cond.device)
    return {"guidance_free_s": r["a_s"], "cfg_s": r["b_s"], "guidance_free_over_cfg": r["ratio"]}


def fixed_cost(model: Transformer, small: int, large: int, tokens: int, repeats: int = 3) -> dict:
    """Fit time(R rows) = F + s * R from guidance-free runs at two batch sizes: F is the per-call cost that does
    not grow with rows (reading the weights every step, dispatch), s the cost per row. Guidance-free / CFG at B rows
    is then about (F + sB) / (F + 2sB), which reaches 0.52 only once B >= 12 F / s."""
    a, b = _cond(model, small), _cond(model, large)
    r = _paired(lambda: generate(model, a, tokens), lambda: generate(model, b, tokens), repeats, a.device)
    per_row = (r["b_s"] - r["a_s"]) / (large - small)
    fixed = max(r["a_s"] - per_row * small, 0.0)
    return {"fixed_s": fixed, "per_row_s": per_row, "fixed_in_rows": fixed / per_row if per_row > 0 else None,
            "fit_batches": [small, large]}


def cache_ratio(model: Transformer, batch: int, tokens: int, repeats: int = 3) -> dict:
    cond = _cond(model, batch)
    r = _paired(lambda: generate(model, cond, tokens), lambda: generate_uncached(model, cond, tokens), repeats,
                cond.device)
    return {"cached_s": r["a_s"], "uncached_s": r["b_s"], "cached_over_uncached": r["ratio"]}


def length_ratio(model: Transformer, batch: int, tokens: int, repeats: int = 3) -> dict:
    if 2 * tokens > model.block_size:
        raise ValueError(f"2 x tokens ({2 * tokens}) exceeds block_size {model.block_size}")
    cond = _cond(model, batch)
    r = _paired(lambda: generate(model, cond, 2 * tokens), lambda: generate(model, cond, tokens), repeats,
                cond.device)
    return {"T": tokens, "cached_T_s": r["b_s"], "cached_2T_s": r["a_s"], "two_T_over_T": r["ratio"]}


def bench_all(repeats: int = 3, dim: int = 384, n_layer: int = 6, n_head: int = 6, vocab_size: int = 1024,
              cfg_batch: int = 1024, cfg_tokens: int = 8, kv_batch: int = 16, kv_tokens: int = 32,
              device: str = "cpu") -> dict:
    """All measurements on one random model, in one process (the shape benchmarks/run.py reads).

    Guidance is timed at a large batch (the ratio is about rows per step, and at small batches a fixed per-step
    cost - reading the weights, dispatch - hides the halving; ``fixed_cost`` measures that cost); the KV-cache
    comparisons at a small batch and a longer sequence (they are about sequence length)."""
    block = max(64, (int((2 * kv_tokens) ** 0.5 + 0.999)) ** 2)
    model = bench_model(dim, n_layer, n_head, vocab_size, block).to(device)
    with torch.inference_mode():
        g = guidance_ratio(model, cfg_batch, cfg_tokens, repeats=repeats)
        small = max(cfg_batch // 16, 1)
        f = fixed_cost(model, small, max(cfg_batch // 4, small + 1), cfg_tokens, repeats=repeats)
        c = cache_ratio(model, kv_batch, kv_tokens, repeats=repeats)
        n = length_ratio(model, kv_batch, kv_tokens, repeats=repeats)
    config = {"dim": dim, "n_layer": n_layer, "n_head": n_head, "vocab_size": vocab_size, "device": device,
              "threads": torch.get_num_threads(), "repeats": repeats, "timing": "medians of interleaved rounds",
              "torch": torch.__version__}
    return {"config": config,
            "sampling": {"ratio": g["guidance_free_over_cfg"], "batch": cfg_batch, "tokens": cfg_tokens, **g, **f},
            "kv": {"cached_over_uncached": c["cached_over_uncached"], "twice_over_once": n["two_T_over_T"],
                   "batch": kv_batch, **c, **n}}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--cfg-batch", type=int, default=1024, help="rows for the guidance-free / CFG timing")
    p.add_argument("--cfg-tokens", type=int, default=8)
    p.add_argument("--kv-batch", type=int, default=16, help="rows for the KV-cache timings")
    p.add_argument("--kv-tokens", type=int, default=32, help="T of the 2T / T and cached / uncached timings")
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = bench_all(args.repeats, args.dim, args.n_layer, args.n_head, args.vocab_size, args.cfg_batch,
                    args.cfg_tokens, args.kv_batch, args.kv_tokens, args.device)
    if args.json:
        print(json.dumps(res, indent=1))
    g, c, length = res["sampling"], res["kv"], res["kv"]
    print(f"guidance-free / CFG time: {g['guidance_free_over_cfg']:.3f} ({g['guidance_free_s']:.3f}s / "
          f"{g['cfg_s']:.3f}s)")
    print(f"cached / uncached time:   {c['cached_over_uncached']:.3f} ({c['cached_s']:.3f}s / {c['uncached_s']:.3f}s)")
    print(f"2T / T cached time:       {length['two_T_over_T']:.3f} (T={length['T']}: {length['cached_T_s']:.3f}s, "
          f"2T: {length['cached_2T_s']:.3f}s)")
    return res


if __name__ == "__main__":
    main()
