"""Side by side with the original code: the same tiny random-weight models, the same batch, the same machine, the
original VAR / LlamaGen / CCA code against ours, per measure ours / original (below 1: ours is faster).

    python benchmarks/vs_original.py --original-root /path/to/CCA        # thu-ml/CCA with VAR/ and LlamaGen/ inside
    flock /work/cpu.lock python benchmarks/vs_original.py --original-root ... --rounds 14   # the RESULTS.md table

The original code is imported at run time from --original-root (nothing of it is stored in this repository). Each
family runs in its own process (the originals' module names would collide), fp32, --threads torch threads. Rows:
guidance-free and CFG sampling (whole and tokens only), VQ decode and encode, a plain forward+backward step, and a
CCA step (ours through cca.trainer; the original through its own trainer code: VAR_CCA_trainer.py, and the body of
LlamaGen_finetune.py's training loop). Every row is timed at --batch and at each batch of the row's sweep; the
table gives ours / original at --batch and at each side's fastest batch per image. Timing: interleaved rounds in
alternating order, medians of per-round ratios, rounds with foreign CPU load repeated (benchmarks/side_by_side.py).
Both sides run under the same allocator setting (glibc keeps freed memory, as our CLIs set it; --default-malloc
leaves glibc alone).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

FAMILIES = ("var", "llamagen")
SWEEPS = {"default": ((16, 64), (16, 32)), "quick": ((2, 4), (2, 4)), "released": ((16, 64), (16, 32))}


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive batch sizes, got {text!r}")
    return values


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--original-root", required=True, help="folder with the original release (VAR/, LlamaGen/ inside)")
    ap.add_argument("--families", default="var,llamagen", help="comma-separated: var, llamagen")
    ap.add_argument("--config", default="default", choices=sorted(SWEEPS), help="model sizes (released: GPU only)")
    ap.add_argument("--batch", type=int, default=16, help="the reference batch of every row")
    ap.add_argument("--sample-batches", type=_ints, help="sweep of the sampling / decode / encode rows")
    ap.add_argument("--train-batches", type=_ints, help="sweep of the training-step rows")
    ap.add_argument("--rows", default="", help="comma-separated row keys, run in this order (default: all)")
    ap.add_argument("--budget-s", type=float, default=0, help="per family: start no row after this many seconds")
    ap.add_argument("--rounds", type=int, default=7, help="clean rounds per row")
    ap.add_argument("--extra-rounds", type=int, default=7, help="at most this many rounds repeated for load")
    ap.add_argument("--max-foreign", type=float, default=0.3, help="cores other processes may use during a round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--default-malloc", action="store_true", help="leave glibc's allocator settings alone")
    ap.add_argument("--out", default=str(HERE / "results-vs-original.json"))
    ap.add_argument("--worker", choices=FAMILIES, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    return ap


# ------------------------------------------------------------------------------ one family, in its own process
def run_family(args) -> dict:
    import warnings

    import torch

    import originals
    from side_by_side import run_rounds, summarise
    warnings.filterwarnings("ignore", category=FutureWarning)     # the originals' deprecated torch.cuda.amp calls
    warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
    torch.set_num_threads(args.threads)
    if not args.default_malloc:
        from cca.cpu_memory import keep_freed_memory
        keep_freed_memory()
    device = torch.device(args.device)
    root = originals.check_root(args.original_root, args.worker)
    if args.worker == "var":
        import vs_original_var as fam
        o = originals.load_var(root)
    else:
        import vs_original_llamagen as fam
        o = originals.load_llamagen(root)
    sample, train = SWEEPS[args.config]
    sample = tuple(sorted({args.batch, *(args.sample_batches or sample)}))
    train = tuple(sorted({args.batch, *(args.train_batches or train)}))
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    rows = {row.key: row for row in fam.rows(o, args.config, device, sample, train)}
    wanted = [k for k in args.rows.split(",") if k] or list(rows)     # in the order asked for
    deadline = time.time() + args.budget_s if args.budget_s else float("inf")
    out = {"config": fam.CONFIGS[args.config], "rows": {}}
    for key in wanted:
        row, t0 = rows[key], time.time()
        try:
            if t0 > deadline:
                raise TimeoutError("skipped: time budget")
            calls = {(side, b): row.make(side, b) for b in row.batches for side in ("ours", "original")}
            res = summarise(run_rounds(calls, args.rounds, args.extra_rounds, args.max_foreign, sync), args.batch)
        except Exception as e:            # one failing row must not hide the others
            res = {"error": f"{type(e).__name__}: {e}"[:400]}
        out["rows"][key] = {"label": row.label, "target": row.target, "wall_s": round(time.time() - t0, 1), **res}
        Path(args.worker_out).write_text(json.dumps(out, default=str))      # what is done survives a kill
        print(f"[{args.worker}] {key}: {res.get('ratio_ref', res.get('error'))}", file=sys.stderr, flush=True)
    return out


# ------------------------------------------------------------------------------ parent: one process per family
def machine() -> dict:
    import torch
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                 platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


def spawn(args, family: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    cmd = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--worker", family, "--worker-out", path]
    try:
        proc = subprocess.run(cmd, cwd=HERE.parent)
        done = Path(path).read_text()
        res = json.loads(done) if done else {"rows": {}}
        if proc.returncode != 0:
            res["error"] = f"the {family} process exited with {proc.returncode} (its stderr is above)"
        return res
    finally:
        os.unlink(path)


def fmt(v, spec=".3f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def table(results: dict, ref_batch: int) -> str:
    lines = []
    for fam, res in results["families"].items():
        lines += [f"\n{fam}: ours / original (< 1: ours faster)", f"| measure | original s (batch {ref_batch}) | "
                  f"ours s | ours/original | fastest per image: original (batch) | ours (batch) | ratio | target | "
                  f"met |", "|---|---:|---:|---:|---:|---:|---:|---|---|"]
        if "error" in res:
            lines.append(f"| {res['error']} |")
        for key, r in res.get("rows", {}).items():
            if "error" in r:
                lines.append(f"| {r['label']} | error: {r['error']} |")
                continue
            sec, best, ratio, target = r["seconds"], r["best_batch"], r.get("ratio_ref"), r["target"]
            per_img = {s: sec[s][str(best[s])] / best[s] * 1e3 for s in ("ours", "original")}
            met = "-" if target is None or ratio is None else ("yes" if ratio <= target else "NO")
            flag = " (loaded)" if r["loaded"] else ""
            lines.append(f"| {r['label']}{flag} | {fmt(sec['original'].get(str(ref_batch)))} | "
                         f"{fmt(sec['ours'].get(str(ref_batch)))} | **{fmt(ratio)}** | "
                         f"{per_img['original']:.2f} ms ({best['original']}) | {per_img['ours']:.2f} ms "
                         f"({best['ours']}) | {fmt(r['ratio_best_per_image'])} | "
                         f"{'-' if target is None else f'<= {target:.3g}'} | {met} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.worker:
        Path(args.worker_out).write_text(json.dumps(run_family(args), default=str))
        return 0
    families = [f for f in args.families.split(",") if f]
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        raise SystemExit(f"--families: expected names from {', '.join(FAMILIES)}, got {args.families!r}")
    from side_by_side import ROW_KEYS
    unknown = [k for k in args.rows.split(",") if k and k not in ROW_KEYS]
    if unknown:
        raise SystemExit(f"--rows: unknown {', '.join(unknown)}; rows are {', '.join(ROW_KEYS)}")
    import originals
    try:
        for fam in families:
            originals.check_root(args.original_root, fam)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    from side_by_side import loadavg
    results = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "threads": args.threads,
               "device": args.device, "config": args.config, "batch": args.batch, "rounds": args.rounds,
               "allocator": "glibc default" if args.default_malloc else "freed memory kept (cca.cpu_memory)",
               "loadavg_before": loadavg(), "families": {}}
    for fam in families:
        results["families"][fam] = spawn(args, fam)
    results["loadavg_after"] = loadavg()
    print(table(results, args.batch))
    print(f"\nloadavg before {results['loadavg_before']}, after {results['loadavg_after']}")
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
