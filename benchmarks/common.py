"""Timing and memory helpers for the benchmarks: medians after warm-ups, peak RSS of a child process."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


def paired_times(fn_a: Callable[[], object], fn_b: Callable[[], object], repeats: int = 5, warmup: int = 1,
                 sync: Callable[[], object] | None = None) -> dict:
    """Times ``fn_a`` and ``fn_b`` alternately (a, b, a, b, ...) after ``warmup`` untimed rounds, so that drifting
    load from other processes hits both alike. Returns the median seconds of each and the median of the per-round
    ratios a/b (steadier than a ratio of medians on a shared machine)."""
    sync = sync or (lambda: None)
    a_s, b_s = [], []
    for r in range(warmup + repeats):
        for fn, out in ((fn_a, a_s), (fn_b, b_s)):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if r >= warmup:
                out.append(time.perf_counter() - t0)
    return {"a_s": statistics.median(a_s), "b_s": statistics.median(b_s),
            "ratio": statistics.median(a / b for a, b in zip(a_s, b_s))}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> int:
    """Reset the kernel's peak-RSS counter for this process (Linux) and return the current RSS in KiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_kb("VmRSS")


def peak_kb() -> int:
    return _status_kb("VmHWM")


def child_peak_mb(module: str, case: str, **kwargs) -> float:
    """Run ``module.memory_case(case, **kwargs)`` in a fresh Python and return its peak RSS above the post-import
    baseline, in MiB (the case itself resets the peak after importing and building its inputs)."""
    code = (f"import json,sys; sys.path[:0]=[{str(ROOT)!r}, {str(ROOT / 'benchmarks')!r}]; import torch; "
            f"torch.set_num_threads(2); import {module} as m; "
            f"print('RESULT', json.dumps(m.memory_case({case!r}, **{kwargs!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONHASHSEED": "0"})
    if out.returncode != 0:
        raise RuntimeError(f"memory case {module}.{case} failed:\n{out.stderr[-2000:]}")
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return float(json.loads(line[len("RESULT "):]))


def measure_peak_mb(run: Callable[[], object]) -> float:
    """Peak RSS increase (MiB) while ``run()`` executes, relative to just before it (call in a fresh process)."""
    import gc
    gc.collect()
    base = reset_peak()
    run()
    return (peak_kb() - base) / 1024.0
