"""One short check on one GPU at the released sizes with random weights (run by benchmarks/gpu_check.sh; no network).

Sections (each in its own try block: one failure still reports the rest; sections past the time budget are
marked skipped):
  var_graph_equality      VAR-d16, CUDA-graph vs eager sampler, top-k 1: same tokens at every scale (fp32, bf16)
  var_graph_vs_eager      VAR-d16 tokens-only sampling time, graphed / eager (target: graphed >= 2x faster)
  var_sampling            VAR-d16 + VQVAE at 256 px: guidance-free and CFG images/s over batches; guidance-free /
                          CFG time per image, each at its fastest batch (target <= 0.6)
  llamagen_sampling       GPT-B + VQ-16 at 384 px, the same (target <= 0.6)
  vs_original             benchmarks/vs_original.py at the released sizes (fp32, batch 16 and 64), when
                          ORIGINAL_ROOT names the originals' folder
  llamagen_graph_equality GPT-B CUDA-graph vs eager decode, top-k 1, same seed: tokens and step logits
  var_cca_step / llamagen_cca_step   CCA step images/s and peak memory at the largest batch that fits
  cca_step_bf16_reference CCA step memory with the frozen reference in bf16 (issue 17: not yet available)
  eval_features           our ADM InceptionV3 vs pytorch-fid's, images/s
Writes $OUT/gpu_check.json (or benchmarks/results-gpu.json without $OUT). GPU_CHECK_ONLY=a,b runs some sections;
GPU_CHECK_SMOKE=1 runs every section on the CPU with tiny models (to check the script before spending GPU time).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import gpu_models as gm  # noqa: E402

SMOKE = gm.SMOKE
DEV = gm.DEV
BUDGET_S = float(os.environ.get("GPU_CHECK_BUDGET_S", "330"))      # the whole run stays under 6 minutes
T0 = time.time()
RES: dict = {}
SECTIONS: list = []


def left_s() -> float:
    return BUDGET_S - (time.time() - T0)


def section(fn):
    """Register ``fn`` as a section: timed, in its own try block, skipped once the budget is spent."""
    def run():
        if left_s() < 10:
            RES[fn.__name__] = {"skipped": "time budget"}
            return
        t0 = time.time()
        try:
            RES[fn.__name__] = fn()
        except Exception as e:
            traceback.print_exc()
            RES[fn.__name__] = {"error": f"{type(e).__name__}: {e}"[:400]}
        RES[fn.__name__]["section_s"] = round(time.time() - t0, 1)
        print(fn.__name__, json.dumps(RES[fn.__name__], default=str), flush=True)
        save()                                   # after every section: a run killed later keeps what it measured
        gm.free_memory()
    run.name = fn.__name__
    SECTIONS.append(run)
    return fn


@section
def env():
    if DEV.type != "cuda":
        return {"device": "cpu (smoke run)", "torch": torch.__version__}
    p = torch.cuda.get_device_properties(0)
    return {"device": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "torch": torch.__version__}


@section
def var_graph_equality():
    """Same seed, top-k 1: the graphed sampler must choose the eager sampler's tokens at every scale."""
    out = {}
    var = gm.var_model(eval_mode=True)
    labels = torch.arange(8, device=DEV) * 97 % 1000
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        for cfg in (0.0, 1.5):
            out[f"{name}_cfg{cfg:g}"] = gm.var_graph_vs_eager_tokens(var, labels, cfg, dtype)
    return out


@section
def var_graph_vs_eager():
    var = gm.var_model(eval_mode=True)
    B = 2 if SMOKE else 64
    labels = torch.randint(1000, (B,), device=DEV)
    out = {"batch": B}
    with gm.autocast():
        for graph in (False, True):
            out[f"{'graph' if graph else 'eager'}_tokens_s"] = gm.timed(
                lambda: gm.var_tokens(var, labels, 0.0, cuda_graph=graph), repeats=3)
    out["graph_speedup"] = out["eager_tokens_s"] / out["graph_tokens_s"]
    out["target_speedup"] = 2.0
    return out


@section
def var_sampling():
    var = gm.var_model(eval_mode=True)
    return gm.sweep(lambda B, cfg: gm.var_images(var, B, cfg), (2, 3) if SMOKE else (64, 128, 256), 0.0, 1.5,
                    lambda: left_s() > 90)


@section
def llamagen_sampling():
    model, vq = gm.llamagen_models()
    return gm.sweep(lambda B, cfg: gm.llamagen_images(model, vq, B, cfg), (2, 3) if SMOKE else (64, 128, 256, 512),
                    1.0, 2.0, lambda: left_s() > 90)


@section
def vs_original():
    root = os.environ.get("ORIGINAL_ROOT")
    if not root:
        return {"skipped": "ORIGINAL_ROOT not set (the folder holding the original release: VAR/, LlamaGen/ inside)"}
    out = Path(os.environ.get("OUT", "/tmp")) / "vs_original.json"
    budget = max(20.0, (left_s() - 40) / 2)          # per family; rows past it are reported as skipped
    cmd = [sys.executable, str(HERE / "vs_original.py"), "--original-root", root, "--config",
           "quick" if SMOKE else "released", "--device", str(DEV), "--rounds", "2", "--extra-rounds", "0",
           "--max-foreign", "99", "--sample-batches", "64", "--train-batches", "16", "--threads", "8",
           "--rows", "free_whole,cfg_whole,free_tokens,decode,plain_step,cca_step,cfg_tokens,encode",
           "--budget-s", str(budget), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=2 * budget + 120)
    print(proc.stdout[-6000:], proc.stderr[-3000:], flush=True)
    if proc.returncode != 0:
        return {"error": f"vs_original.py exited with {proc.returncode}: {proc.stderr[-300:]}"}
    res = json.loads(out.read_text())
    return {fam: {k: {"ratio_ref": r.get("ratio_ref"), "ratio_best_per_image": r.get("ratio_best_per_image"),
                      "best_batch": r.get("best_batch"), "error": r.get("error")} for k, r in f["rows"].items()}
            if "rows" in f else f for fam, f in res["families"].items()}


@section
def llamagen_graph_equality():
    return gm.llamagen_graph_vs_eager()


@section
def var_cca_step():
    return gm.cca_step_rate(gm.var_batch, (2,) if SMOKE else (72, 48, 32, 16))


@section
def llamagen_cca_step():
    return gm.cca_step_rate(gm.llamagen_batch, (2,) if SMOKE else (96, 64, 32, 16))


@section
def cca_step_bf16_reference():
    # To add with --ref-dtype bf16 (issue 17, part 4): the CCA step of var_cca_step / llamagen_cca_step at the same
    # batch with the frozen reference held in bf16 (log-probs summed in fp32); report peak GiB next to fp32's.
    return {"skipped": "the bf16 reference (--ref-dtype bf16) is not implemented yet"}


@section
def eval_features():
    import bench_eval
    r = bench_eval.bench_features(repeats=5, batch_size=2 if SMOKE else 64, image_size=64 if SMOKE else 256,
                                  device=str(DEV))
    return {k: r[k] for k in ("ours_images_per_s", "pytorch_fid_images_per_s", "ratio", "batch_size")}


def summary() -> str:
    lines = ["| check | result |", "|---|---|"]
    for k, v in RES.items():
        flat = ", ".join(f"{a}={b:.3g}" if isinstance(b, float) else f"{a}={b}" for a, b in v.items())
        lines.append(f"| {k} | {flat} |")
    return "\n".join(lines)


def result_path() -> Path:
    out_dir = os.environ.get("OUT")
    if out_dir:
        return Path(out_dir) / "gpu_check.json"
    return Path("/tmp/gpu-check-smoke.json") if SMOKE else HERE / "results-gpu.json"


def save() -> None:
    result_path().write_text(json.dumps(RES, indent=1, default=str))


def main() -> int:
    only = [s for s in os.environ.get("GPU_CHECK_ONLY", "").split(",") if s]
    for run in SECTIONS:
        if not only or run.name in only:
            run()
    print("\n" + summary())
    print(f"wrote {result_path()} ({time.time() - T0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
