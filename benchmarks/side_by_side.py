"""Timing two implementations of the same work side by side: interleaved rounds in alternating order, medians,
and foreign-load detection between rounds (used by vs_original.py and gpu_check.py).

A row is one measure (say "guidance-free sampling"), timed for each side ("ours", "original") at each batch size of
the row. Every round runs every (side, batch) once; odd rounds run them in reverse order, so drift and warm caches hit
both sides alike. After each round the CPU time the rest of the machine used during it is read from /proc/stat; a
round during which other processes kept more than ``max_foreign`` cores busy is set aside and repeated (up to as
many extra rounds as asked for). The ratio ours/original is the median of the per-round ratios.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

SIDES = ("ours", "original")
Work = Callable[[], object]
NUM_CLASSES = 1000          # the original CCA trainers write the literal 1000 as the null class
ROW_KEYS = ("free_whole", "free_tokens", "cfg_whole", "cfg_tokens", "decode", "encode", "plain_step", "cca_step")
# issue 20's targets, ours / original at the reference batch: guidance-free whole >= 1.3x faster, tokens >= 2x,
# CFG, decode and the plain step no slower
TARGETS = {"free_whole": 1 / 1.3, "free_tokens": 0.5, "cfg_whole": 1.0, "cfg_tokens": 1.0, "decode": 1.0,
           "plain_step": 1.0}


@dataclass
class Row:
    key: str
    label: str
    make: Callable[[str, int], Work]    # (side, batch) -> the work, its inputs already built
    batches: tuple[int, ...]

    @property
    def target(self) -> float | None:
        return TARGETS.get(self.key)


class LoadMonitor:
    """CPU time used by other processes (in cores) over an interval, from /proc/stat minus this process's own."""

    def __init__(self):
        self.tick = os.sysconf("SC_CLK_TCK")
        self.start()

    @staticmethod
    def _busy_jiffies() -> int | None:
        try:
            fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)     # idle + iowait
        guest = sum(fields[8:10]) if len(fields) > 9 else 0          # already counted in user / nice
        return sum(fields) - idle - guest

    def start(self) -> None:
        t = os.times()
        self.t0 = (time.monotonic(), t.user + t.system, self._busy_jiffies())

    def foreign_cores(self) -> float | None:
        wall0, own0, busy0 = self.t0
        busy = self._busy_jiffies()
        if busy is None or busy0 is None:
            return None
        t = os.times()
        wall = max(time.monotonic() - wall0, 1e-9)
        return max((busy - busy0) / self.tick - (t.user + t.system - own0), 0.0) / wall


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


@dataclass
class Rounds:
    times: dict[tuple[str, int], list[float]] = field(default_factory=dict)   # clean rounds only
    foreign: list[float] = field(default_factory=list)                          # per round, cores
    dirty: int = 0
    loaded: bool = False                 # too few clean rounds: the medians include loaded ones


def run_rounds(calls: dict[tuple[str, int], Work], rounds: int, extra: int, max_foreign: float,
               sync: Callable[[], object] = lambda: None, warmup: int = 1) -> Rounds:
    """Time every call once per round, alternating the order; repeat rounds that ran under foreign load."""
    combos = list(calls)
    for _ in range(warmup):
        for c in combos:
            calls[c]()
    sync()
    monitor, out, kept_dirty = LoadMonitor(), Rounds({c: [] for c in combos}), {c: [] for c in combos}
    r = 0
    while len(out.times[combos[0]]) < rounds and r < rounds + extra:
        monitor.start()
        this = {}
        for c in (combos if r % 2 == 0 else combos[::-1]):
            t0 = time.perf_counter()
            calls[c]()
            sync()
            this[c] = time.perf_counter() - t0
        load = monitor.foreign_cores()
        out.foreign.append(-1.0 if load is None else round(load, 3))
        clean = load is None or load <= max_foreign
        out.dirty += not clean
        for c, t in this.items():
            (out.times if clean else kept_dirty)[c].append(t)
        r += 1
    if len(out.times[combos[0]]) < max(1, rounds // 2):     # not enough quiet rounds: use them all, say so
        out.loaded = True
        for c in combos:
            out.times[c] += kept_dirty[c]
    return out


def summarise(rounds: Rounds, ref_batch: int) -> dict:
    """Per side: median seconds at every batch; ours/original at ``ref_batch`` and at each side's fastest batch per
    image (the median of per-round ratios of seconds per image)."""
    t = rounds.times
    batches = sorted({b for _, b in t})
    med = {s: {b: statistics.median(t[s, b]) for b in batches} for s in SIDES}
    best = {s: min(batches, key=lambda b: med[s][b] / b) for s in SIDES}
    n = len(t[SIDES[0], batches[0]])
    per_image = [(t["ours", best["ours"]][i] / best["ours"]) / (t["original", best["original"]][i] / best["original"])
                 for i in range(n)]
    out = {"seconds": {s: {str(b): med[s][b] for b in batches} for s in SIDES},
           "best_batch": best, "ratio_best_per_image": statistics.median(per_image), "rounds": n,
           "dirty_rounds": rounds.dirty, "loaded": rounds.loaded, "foreign_cores": rounds.foreign}
    if ref_batch in batches:
        out["ratio_ref"] = statistics.median(a / b for a, b in zip(t["ours", ref_batch], t["original", ref_batch]))
    return out


class Pair:
    """One family's models built twice, by our code and by the original (``build_original`` loads our weights),
    and what every row of the family needs."""

    def __init__(self, o, c: dict, device, build_ours, build_original):
        import tempfile
        self.c, self.o, self.device = c, o, device
        self.ours = build_ours(c, device)
        self.orig = build_original(o, c, self.ours, device)
        self.tmp = tempfile.mkdtemp(prefix="vs-original-")

    def side(self, side: str):
        return self.ours if side == "ours" else self.orig

    def labels(self, B: int):
        import torch
        return torch.arange(B, device=self.device) % NUM_CLASSES

    def our_trainer(self, policy, adapter, B: int, **cfg):
        """cca.trainer.Trainer on one process (no process group, no allocator change) with a frozen copy."""
        import copy

        from cca.dist import Dist
        from cca.trainer import TrainConfig, Trainer
        one = Dist(rank=0, world_size=1, local_rank=0, device=self.device, backend=None)
        return Trainer(policy, copy.deepcopy(policy), adapter, TrainConfig(out_dir=self.tmp, batch_size=B, **cfg),
                       dist=one)
