"""The miniature's claims, checked per family under every feature network, with bootstrap intervals.

Targets (issue 19): CCA guidance-free is strictly better than base guidance-free, and closes at least half of the
gap to the best base+CFG value of each metric (classifier-FID and accuracy, best CFG scale taken per metric),
under every feature network; robustly so when the 95 % interval's lower end is above 0.3 as well. Its time per
image is at most 0.55 x that of the fastest CFG sampler, counted only when measured on a quiet machine.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from demo.bootstrap import gap_closed, interval

HALF, ROBUST_LOWER, TIME_LIMIT = 0.5, 0.3, 0.55
METRICS = (("fid", True), ("accuracy", False))          # (metric, lower is better)


def family_variants(variants: dict, family: str, seed: int) -> tuple[dict, dict, list[dict]] | None:
    """(base guidance-free, CCA guidance-free, [base + CFG ...]) of one family and run seed, or None."""
    mine = [v for v in variants.values() if v["family"] == family and v.get("seed", seed) == seed]
    base = [v for v in mine if v["model"] == "base" and not v["guided"]]
    cca = [v for v in mine if v["model"] == "cca"]
    guided = [v for v in mine if v["model"] == "base" and v["guided"]]
    if not (base and cca and guided):
        return None
    return base[0], cca[0], guided


def gap_checks(trio: tuple[dict, dict, list[dict]], net: str, replicates: Callable[[dict], dict]) -> dict:
    """Gap closed in each metric under ``net``: point estimate and the interval of the jointly bootstrapped
    ratio (replicate b of every variant forms one replicate of the ratio)."""
    base, cca, guided = trio
    out = {}
    for metric, lower in METRICS:
        def point(v):
            return v["scores"][net][metric]

        def reps(v):
            return replicates(v)[f"{net}/{metric}"]
        values = [point(g) for g in guided]
        out[f"best_cfg_{metric}"] = min(values) if lower else max(values)
        out[f"{metric}_gap_closed"] = float(gap_closed(point(base), point(cca), values, lower))
        out[f"{metric}_gap_closed_ci"] = interval(gap_closed(reps(base), reps(cca), [reps(g) for g in guided],
                                                             lower))
    s = {m: (base["scores"][net][m], cca["scores"][net][m]) for m, _ in METRICS}
    out["strictly_better"] = s["fid"][1] < s["fid"][0] and s["accuracy"][1] > s["accuracy"][0]
    return out


def time_check(trio: tuple[dict, dict, list[dict]]) -> dict:
    """CCA's time per image against the fastest CFG sampler's; no ratio unless every kept batch was quiet."""
    _, cca, guided = trio
    timed = [cca] + guided
    loads = [v.get("timing_load", float("nan")) for v in timed]
    quiet = all(v.get("timing_quiet", False) for v in timed)
    ratio = cca["sec_per_image"] / min(v["sec_per_image"] for v in guided)
    return {"ratio": ratio if quiet else None, "ratio_unchecked": ratio, "quiet": quiet,
            "max_load_of_kept_batches": float(np.nanmax(loads)) if np.isfinite(loads).any() else float("nan"),
            "pass": ratio <= TIME_LIMIT if quiet else None}


def family_targets(variants: dict, family: str, seed: int, nets: list[str], replicates: Callable[[dict], dict],
                   timed: bool = True) -> dict | None:
    """Every target of one family and run seed under every network; 'pass_all' needs all of them under all
    networks (and, when ``timed``, a quiet time measurement within the limit)."""
    trio = family_variants(variants, family, seed)
    if trio is None:
        return None
    per_net = {net: gap_checks(trio, net, replicates) for net in nets}
    half = all(c[f"{m}_gap_closed"] >= HALF for c in per_net.values() for m, _ in METRICS)
    robust = all(c[f"{m}_gap_closed_ci"][0] > ROBUST_LOWER for c in per_net.values() for m, _ in METRICS)
    better = all(c["strictly_better"] for c in per_net.values())
    out = {"networks": per_net, "pass_half_gap": half, "pass_robust": half and robust, "pass_strictly_better": better}
    if timed:
        out["time"] = time_check(trio)
        out["pass_all"] = half and better and out["time"]["pass"] is True
    return out


def spread(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(np.mean(a)), "sd": float(np.std(a, ddof=1)) if len(a) > 1 else 0.0,
            "min": float(np.min(a)), "max": float(np.max(a)), "values": [float(v) for v in a]}


def seed_summary(variants: dict, family: str, seeds: list[int], nets: list[str],
                 replicates: Callable[[dict], dict]) -> dict | None:
    """Mean and spread over run seeds of each network's scores and gaps closed."""
    runs = {s: family_targets(variants, family, s, nets, replicates, timed=False) for s in seeds}
    if any(r is None for r in runs.values()):
        return None
    out = {}
    for net in nets:
        rows = {}
        for s in seeds:
            base, cca, _ = family_variants(variants, family, s)
            checks = runs[s]["networks"][net]
            for metric, _ in METRICS:
                rows.setdefault(f"base_{metric}", []).append(base["scores"][net][metric])
                rows.setdefault(f"cca_{metric}", []).append(cca["scores"][net][metric])
                rows.setdefault(f"best_cfg_{metric}", []).append(checks[f"best_cfg_{metric}"])
                rows.setdefault(f"{metric}_gap_closed", []).append(checks[f"{metric}_gap_closed"])
        out[net] = {k: spread(v) for k, v in rows.items()}
    out["pass_half_gap_every_seed"] = all(r["pass_half_gap"] for r in runs.values())
    out["pass_robust_every_seed"] = all(r["pass_robust"] for r in runs.values())
    return out
