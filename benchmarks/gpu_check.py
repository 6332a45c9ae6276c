"""One-GPU check at the released sizes with random weights, bf16 (run by benchmarks/gpu_check.sh; no network).

VAR-d16 + the 4096-code VAE at 256 px, LlamaGen GPT-B at 384 px + VQ-16: CCA training step images/s and peak
memory at the largest batch that fits (of a few tried), sampling images/s guidance-free vs CFG at batch 64, and
torch.compile on/off for LlamaGen decoding. Prints one table and writes benchmarks/results-gpu.json.
"""
from __future__ import annotations

import copy
import json
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

from cca.trainer import TrainConfig, Trainer  # noqa: E402

import os  # noqa: E402

# GPU_CHECK_SMOKE=1 runs the same code on the CPU with tiny models (to check the script before spending GPU time)
SMOKE = os.environ.get("GPU_CHECK_SMOKE") == "1"
DEV = torch.device("cpu" if SMOKE else "cuda")


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def peak_gib():
    return torch.cuda.max_memory_allocated() / 2**30 if DEV.type == "cuda" else float("nan")


def empty_cache():
    if DEV.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
DEADLINE = time.time() + 7 * 60          # leave a margin inside the 8-minute budget
RES: dict = {}
NB = 2 if SMOKE else 64                   # sampling batch


def timed(fn, repeats=3, warmup=1):
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeats


def section(name):
    def wrap(fn):
        def run():
            if time.time() > DEADLINE:
                RES[name] = {"skipped": "time budget"}
                return
            t0 = time.time()
            try:
                RES[name] = fn()
            except Exception as e:
                traceback.print_exc()
                RES[name] = {"error": f"{type(e).__name__}: {e}"[:400]}
            RES.setdefault(name, {})["section_s"] = round(time.time() - t0, 1)
            print(name, json.dumps(RES[name], default=str), flush=True)
            empty_cache()
        run.section = name
        return run
    return wrap


class Prepared:
    def __init__(self, adapter, batch):
        self.inner, self.num_classes = adapter, adapter.num_classes
        self.batch = adapter.prepare(batch, DEV)

    def prepare(self, batch, device):
        return self.batch

    def logits(self, model, labels, inputs):
        return self.inner.logits(model, labels, inputs)


def _cca_step(make, B, split_halves=True):
    policy, adapter, batch = make(B)
    adapter = Prepared(adapter, batch)
    ref = copy.deepcopy(policy)          # fp32 weights; both passes run under bf16 autocast
    tr = Trainer(policy, ref, adapter, TrainConfig(out_dir="/tmp/gpu-check", batch_size=B, lr=1e-6,
                                                   uncond_ratio=0.1, precision="bf16", split_halves=split_halves))
    empty_cache()
    sec = timed(lambda: tr.train_step(None), repeats=3)
    return {"batch": B, "images_per_s": B / sec, "step_s": sec, "peak_gib": peak_gib()}


def cca_step_rate(make, batches):
    """Largest batch of ``batches`` whose CCA step fits (halves one after the other, the default): images/s and
    peak GiB; then the single 2B-row pass at that batch, for comparison."""
    for B in batches:
        try:
            out = _cca_step(make, B)
        except torch.OutOfMemoryError:
            out = None
        empty_cache()                    # outside the except block: the failed attempt's tensors are gone
        if out is None:
            continue
        try:
            out["joint_pass"] = _cca_step(make, B, split_halves=False)
        except torch.OutOfMemoryError:
            out["joint_pass"] = {"batch": B, "error": "out of memory"}
        empty_cache()
        return out
    return {"error": f"no batch of {batches} fits"}


def var_make(B):
    from VAR import build_vae_var
    from VAR.adapter import VARAdapter
    torch.manual_seed(0)
    if SMOKE:
        vae, var = build_vae_var(device=DEV, depth=2, cond_drop_rate=0.0, patch_nums=(1, 2, 4), V=64, Cvae=8,
                                 ch=32, vae_ch_mult=(1, 2), vae_num_res_blocks=1)
    else:
        vae, var = build_vae_var(device=DEV, depth=16, cond_drop_rate=0.0)
    res = var.patch_nums[-1] * 2 ** (vae.encoder.num_resolutions - 1) if SMOKE else 256
    images = torch.rand(B, 3, res, res, device=DEV) * 2 - 1
    labels = torch.randint(1000, (B,), device=DEV)
    return var.train(), VARAdapter(vae, 1000), (images, labels)


def llamagen_make(B):
    from LlamaGen import GPT_models
    from LlamaGen.adapter import LlamaGenAdapter
    torch.manual_seed(0)
    with DEV:
        if SMOKE:
            from LlamaGen import ModelArgs, Transformer
            model = Transformer(ModelArgs(dim=64, n_layer=2, n_head=4, vocab_size=16384, block_size=576,
                                          num_classes=1000))
        else:
            model = GPT_models["GPT-B"](vocab_size=16384, block_size=576, num_classes=1000)
    codes = torch.randint(16384, (B, 576), device=DEV)
    labels = torch.randint(1000, (B,), device=DEV)
    return model.train(), LlamaGenAdapter(1000), (codes, labels)


@section("env")
def env():
    if DEV.type != "cuda":
        return {"device": "cpu (smoke run)", "torch": torch.__version__}
    p = torch.cuda.get_device_properties(0)
    return {"device": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "torch": torch.__version__}


@section("var_cca_step")
def var_cca():
    return cca_step_rate(var_make, (2,) if SMOKE else (72, 48, 32, 16))


@section("llamagen_cca_step")
def llamagen_cca():
    return cca_step_rate(llamagen_make, (2,) if SMOKE else (96, 64, 32, 16))


@section("var_sampling")
def var_sampling():
    from VAR.sampler import autoregressive_infer_cfg, generate as var_generate
    var_model = var_make(1)[0].eval()
    labels = torch.randint(1000, (NB,), device=DEV)
    args = dict(top_k=900, top_p=0.96)
    with torch.autocast(DEV.type, dtype=torch.bfloat16):
        free = timed(lambda: autoregressive_infer_cfg(var_model, NB, labels, cfg=0.0, **args))
        cfg = timed(lambda: autoregressive_infer_cfg(var_model, NB, labels, cfg=1.5, **args))
        tfree = timed(lambda: var_generate(var_model, NB, labels, cfg=0.0, **args))
        tcfg = timed(lambda: var_generate(var_model, NB, labels, cfg=1.5, **args))
    return {"batch": NB, "free_images_per_s": NB / free, "cfg_images_per_s": NB / cfg,
            "free_over_cfg_time": free / cfg, "tokens_only_free_over_cfg_time": tfree / tcfg,
            "vae_decode_s": free - tfree}


@section("llamagen_sampling")
def llamagen_sampling():
    from LlamaGen import VQ_models, generate
    model = llamagen_make(1)[0].eval().to(torch.bfloat16)
    with DEV:
        vq = VQ_models["VQ-16"]().eval()
    labels = torch.randint(1000, (NB,), device=DEV)
    out = {"batch": NB}
    with torch.no_grad():
        # graph vs eager equality is checked by benchmarks/gpu_graph_check.py (fp32 tokens, bf16 step logits)
        for graph in (False, True):
            tag = "graph" if graph else "eager"
            free = timed(lambda: generate(model, labels, 576, cfg_scale=1.0, cuda_graph=graph), repeats=2)
            cfg = timed(lambda: generate(model, labels, 576, cfg_scale=2.0, cuda_graph=graph), repeats=2)
            out[f"{tag}_tokens_free_s"], out[f"{tag}_tokens_cfg_s"] = free, cfg
            out[f"{tag}_free_over_cfg_time"] = free / cfg
        dec = timed(lambda: vq.decode_code(generate(model, labels, 576), [NB, 8, 24, 24]), repeats=1) \
            - out["graph_tokens_free_s"]
        out["vq_decode_s"] = dec
        out["free_images_per_s"] = NB / (out["graph_tokens_free_s"] + dec)
        out["cfg_images_per_s"] = NB / (out["graph_tokens_cfg_s"] + dec)
        out["free_over_cfg_time"] = (out["graph_tokens_free_s"] + dec) / (out["graph_tokens_cfg_s"] + dec)
    try:   # torch.compile of the decode step, eager launch (no graph), for comparison
        model.forward_cached = torch.compile(model.forward_cached)   # kv_len varies: compiled dynamic after one recompile
        with torch.no_grad():
            t0 = time.perf_counter()
            generate(model, labels, 576, cfg_scale=1.0, cuda_graph=False)
            sync()
            out["compile_first_call_s"] = time.perf_counter() - t0
            out["compiled_tokens_free_s"] = timed(lambda: generate(model, labels, 576, cfg_scale=1.0,
                                                                   cuda_graph=False), 2, 0)
    except Exception as e:
        out["compile"] = f"{type(e).__name__}: {e}"[:300]
    return out


@section("eval_features")
def eval_features():
    sys.path.insert(0, str(HERE))
    import bench_eval
    r = bench_eval.bench_features(repeats=5, batch_size=2 if SMOKE else 64, image_size=64 if SMOKE else 256,
                                  device=str(DEV))
    return {k: r[k] for k in ("ours_images_per_s", "pytorch_fid_images_per_s", "ratio", "batch_size")}


def main():
    only = os.environ.get("GPU_CHECK_ONLY", "")
    for fn in (env, var_cca, llamagen_cca, var_sampling, llamagen_sampling, eval_features):
        if not only or fn.section in only.split(","):
            fn()
    print("\n| check | result |\n|---|---|")
    for k, v in RES.items():
        print(f"| {k} | " + ", ".join(f"{a}={b:.3g}" if isinstance(b, float) else f"{a}={b}"
                                     for a, b in v.items()) + " |")
    out = Path("/tmp/gpu-check-smoke.json") if SMOKE else HERE / "results-gpu.json"   # a smoke run keeps the record
    out.write_text(json.dumps(RES, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
