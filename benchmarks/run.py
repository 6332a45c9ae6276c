"""`make bench`: every CPU benchmark in one process (2 threads), printed as one table of ratios measured in this run
and written to benchmarks/results-cpu.json.

Targets (issue "Performance"): guidance-free/CFG sampling <= 0.52 (limit 0.50); cached 2T/T <= 2.2; CCA/plain step
time <= 2.67 and peak memory <= 1.5; sequence_logprob memory <= 0.5x and time <= 1.0x of log_softmax+gather;
evaluator feature extraction >= 1.0x pytorch-fid.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import bench_core  # noqa: E402
from common import child_peak_mb  # noqa: E402


# ---------------------------------------------------------------- tiny training cases, one per family
def var_case(B: int = 8):
    from VAR import build_tiny_vae_var
    from VAR.adapter import VARAdapter
    vae, var = build_tiny_vae_var(seed=0, patch_nums=(1, 2, 3, 4, 6, 8), V=512, Cvae=16, vae_ch=32, depth=4,
                                  embed_dim=256, num_heads=4, num_classes=10)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(B, 3, 16, 16, generator=g) * 2 - 1
    labels = torch.randint(10, (B,), generator=g)
    return var.train(), VARAdapter(vae, 10), (images, labels)


def llamagen_case(B: int = 8):
    from LlamaGen import ModelArgs, Transformer
    from LlamaGen.adapter import LlamaGenAdapter
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=256, n_layer=4, n_head=4, vocab_size=1024, block_size=256, num_classes=10,
                                  token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0))
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(1024, (B, 256), generator=g)
    labels = torch.randint(10, (B,), generator=g)
    return model.train(), LlamaGenAdapter(10), (codes, labels)


CASES = {"var": var_case, "llamagen": llamagen_case}


def memory_case(case: str) -> float:
    family, kind = case.split("_")
    return bench_core.train_memory_case(CASES[family], kind)


def train_rows(repeats: int) -> dict:
    out = {}
    for fam, make in CASES.items():
        r = bench_core.bench_train_step(make, repeats)
        cca_mb, plain_mb = child_peak_mb("run", f"{fam}_cca"), child_peak_mb("run", f"{fam}_plain")
        out[fam] = {**r, "cca_over_plain_peak_mem": cca_mb / max(plain_mb, 1e-9), "cca_peak_mb": cca_mb,
                    "plain_peak_mb": plain_mb}
    return out


# ---------------------------------------------------------------- table
TARGETS = [
    ("var sampling: guidance-free / CFG time", ("sampling", "var", "ratio"), "<=", 0.52),
    ("llamagen sampling: guidance-free / CFG time", ("sampling", "llamagen", "ratio"), "<=", 0.52),
    ("llamagen cached generation: 2T / T tokens", ("kv", "llamagen", "twice_over_once"), "<=", 2.2),
    ("llamagen cached / full recompute", ("kv", "llamagen", "cached_over_uncached"), "<=", 1.0),
    ("var CCA step / plain step time", ("train", "var", "cca_over_plain_time"), "<=", 2.67),
    ("var CCA / plain peak memory", ("train", "var", "cca_over_plain_peak_mem"), "<=", 1.5),
    ("llamagen CCA step / plain step time", ("train", "llamagen", "cca_over_plain_time"), "<=", 2.67),
    ("llamagen CCA / plain peak memory", ("train", "llamagen", "cca_over_plain_peak_mem"), "<=", 1.5),
    ("sequence_logprob / log_softmax+gather memory", ("logprob", "logprob_peak_mem_ratio"), "<=", 0.5),
    ("sequence_logprob / log_softmax+gather time", ("logprob", "logprob_time_ratio"), "<=", 1.0),
    ("evaluator features: ours / pytorch-fid img/s", ("eval", "ratio"), ">=", 1.0),
]


def _get(d, path):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _optional(name: str, fn):
    try:
        return fn()
    except Exception as e:  # a missing optional piece is reported in the table, not fatal
        return {"error": f"{type(e).__name__}: {e}"[:300]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results-cpu.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    t0 = time.time()
    res: dict = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                 "threads": torch.get_num_threads()}
    res["logprob"] = bench_core.bench_logprob(args.repeats)
    res["train"] = train_rows(args.repeats)
    res["sampling"], res["kv"] = {}, {}
    import bench_var
    res["sampling"]["var"] = _optional("var", lambda: bench_var.bench_sampling(repeats=args.repeats))
    import bench_llamagen
    lg = _optional("llamagen", lambda: bench_llamagen.bench_all(repeats=args.repeats))
    res["sampling"]["llamagen"] = lg.get("sampling", lg)
    res["kv"]["llamagen"] = lg.get("kv", lg)
    import bench_eval
    res["eval"] = _optional("eval", lambda: bench_eval.bench_features(repeats=args.repeats))
    res["seconds"] = time.time() - t0
    print(f"\n{'benchmark':48s} {'measured':>10s}  target   met")
    for label, path, op, target in TARGETS:
        v = _get(res, path)
        if isinstance(v, (int, float)):
            ok = v <= target if op == "<=" else v >= target
            print(f"{label:48s} {v:10.3f}  {op}{target:<5}  {'yes' if ok else 'NO'}")
        else:
            print(f"{label:48s} {'n/a':>10s}  {op}{target:<5}  ({_get(res, path[:-1])})")
    Path(args.out).write_text(json.dumps(res, indent=1, default=str))
    print(f"\nwrote {args.out} ({res['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
