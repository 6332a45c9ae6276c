"""Measured peak memory of a CCA fine-tune step or a sampling batch on the CPU, for tests/test_plan.py.

Run as ``python tests/plan_measure.py '<json spec>'`` in a fresh process: it builds the models described by the spec
(random weights), runs two optimizer steps (the second has AdamW's moments, the steady state) or one sampling
batch, and prints the growth of the resident set over its own baseline as JSON. The baseline is taken after a
first run of the same shapes (one optimizer step), so the code pages, thread stacks and oneDNN kernels a first run
touches are already resident, and the peak-RSS counter is reset there (Linux ``clear_refs``).

Run it with MALLOC_MMAP_THRESHOLD_=65536: glibc then maps every block of 64 KiB or more on its own and unmaps it
when freed, so the resident set follows the live tensor bytes (glibc's adaptive default, and cca.cpu_memory's
setting for CPU runs, keep freed blocks in the heap: 20-25 % more resident memory at the mid sizes). The trainer is
handed its one-process group, so cca.dist.init, which makes that setting, is not called.
"""
from __future__ import annotations

import gc
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from cca import dist as cdist  # noqa: E402
from cca.trainer import TrainConfig, Trainer  # noqa: E402
from plan_models import build  # noqa: E402


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")      # resets VmHWM to the current resident set
    except OSError:
        pass


def finetune(spec: dict, models: dict, steps: int) -> None:
    cfg = TrainConfig(out_dir=tempfile.mkdtemp(), batch_size=spec["micro"] * spec["accum"],
                      grad_accum=spec["accum"], uncond_ratio=0.1, lambda_=10.0, lr=1e-5, weight_decay=0.05,
                      max_grad_norm=1.0, precision="fp32", joint_halves=spec.get("joint", False))
    one = cdist.Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    trainer = Trainer(models["policy"], models["reference"], models["adapter"], cfg, dist=one)
    for step in range(steps):
        trainer.train_step(models["batch"](step))


def run(spec: dict, steps: int) -> None:
    models = build(spec, device="cpu")
    if spec["task"] == "finetune":
        finetune(spec, models, steps)
    else:
        with torch.inference_mode():
            models["sample"]()


def main() -> None:
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    run(spec, steps=1)
    gc.collect()
    baseline = status_kib("VmRSS")
    reset_peak()
    run(spec, steps=2)
    print(json.dumps({"peak_bytes": (status_kib("VmHWM") - baseline) * 1024}))


if __name__ == "__main__":
    main()
