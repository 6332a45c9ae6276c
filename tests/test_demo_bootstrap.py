"""demo.bootstrap and demo.targets: the intervals behind the miniature's claims."""
from __future__ import annotations

import math

import numpy as np
import pytest

from demo.bootstrap import bootstrap_fid, bootstrap_mean, gap_closed, interval, replicate_counts
from demo.targets import family_targets, seed_summary
from evaluations.metrics import frechet_distance


def gaussian_features(n: int, d: int, shift: float, seed: int) -> np.ndarray:
    """n draws of one fixed correlated Gaussian (per d), shifted by ``shift``."""
    mix = np.eye(d) + 0.3 * np.random.default_rng(d).normal(size=(d, d)) / math.sqrt(d)
    return (np.random.default_rng(seed).normal(size=(n, d)) @ mix + shift).astype(np.float32)


def moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = x.astype(np.float64)
    return x.mean(0), np.cov(x, rowvar=False)


def test_replicates_resample_n_items_independently_per_stream():
    a, b = replicate_counts(300, 50, 0, "llamagen_cca"), replicate_counts(300, 50, 0, "llamagen_base")
    assert a.shape == (50, 300) and (a.sum(1) == 300).all() and (a >= 0).all()
    assert not np.array_equal(a, b)
    assert np.array_equal(a, replicate_counts(300, 50, 0, "llamagen_cca"))


def test_unit_weights_give_the_evaluators_fid():
    x, ref = gaussian_features(700, 12, 0.2, 1), gaussian_features(900, 12, 0.0, 2)
    mu_r, sigma_r = moments(ref)
    got = bootstrap_fid(x, np.ones((1, len(x)), dtype=np.int64), mu_r, sigma_r)[0]
    assert got == pytest.approx(frechet_distance(*moments(x), mu_r, sigma_r), rel=1e-5)
    counts = replicate_counts(len(x), 3, 0, "x")
    weighted = np.repeat(x, counts[1], axis=0)                        # replicate 1 written out
    assert bootstrap_fid(x, counts, mu_r, sigma_r)[1] == pytest.approx(
        frechet_distance(*moments(weighted), mu_r, sigma_r), rel=1e-5)


def test_bootstrap_spread_matches_the_spread_of_fresh_samples():
    """The point of the intervals: the sd of the bootstrap FIDs of one sample set is the sd of the FID over
    fresh sample sets of the same size (within sampling error of 40 sets)."""
    ref = gaussian_features(4000, 8, 0.0, 0)
    mu_r, sigma_r = moments(ref)
    fresh = [frechet_distance(*moments(gaussian_features(500, 8, 0.3, 100 + i)), mu_r, sigma_r) for i in range(40)]
    boot = bootstrap_fid(gaussian_features(500, 8, 0.3, 7), replicate_counts(500, 400, 0, "s"), mu_r, sigma_r)
    assert 0.6 < np.std(boot) / np.std(fresh) < 1.6


def test_bootstrap_mean_and_interval():
    hits = np.r_[np.ones(80), np.zeros(20)]
    reps = bootstrap_mean(hits, replicate_counts(100, 2000, 0, "acc"))
    lo, hi = interval(reps)
    assert lo < 0.8 < hi and hi - lo == pytest.approx(2 * 1.96 * math.sqrt(0.8 * 0.2 / 100), rel=0.25)
    assert interval([np.nan, np.nan]) != interval([np.nan, np.nan])          # nan, nan: no interval
    assert interval([1.0, np.nan, 3.0, np.inf], level=0.0) == (2.0, 2.0)     # undefined replicates left out


def test_gap_closed_on_scalars_and_replicates():
    assert gap_closed(90.0, 85.0, [80.0, 82.0], lower_is_better=True) == pytest.approx(0.5)
    assert gap_closed(0.6, 0.7, [0.8, 0.65], lower_is_better=False) == pytest.approx(0.5)
    assert math.isnan(gap_closed(80.0, 70.0, [85.0], lower_is_better=True))        # CFG no better: no gap
    reps = gap_closed(np.array([90.0, 90.0]), np.array([85.0, 89.0]), [np.array([80.0, 88.0]),
                                                                      np.array([82.0, 80.0])], True)
    assert reps == pytest.approx([0.5, 0.1])                                       # best CFG per replicate


def family(fids: dict, accs: dict, seed: int = 0, spread: float = 0.0) -> dict:
    """Variants of one family whose replicates scatter around the point scores by +- spread."""
    out = {}
    for name, model, guided in (("base", "base", False), ("cca", "cca", False), ("cfg2", "base", True)):
        scores = {net: {"fid": fids[name], "accuracy": accs[name]} for net in ("a", "b")}
        out[f"f_{name}_{seed}"] = {"family": "f", "model": model, "guided": guided, "seed": seed, "scores": scores,
                                   "sec_per_image": 2.0 if guided else 1.0, "timing_quiet": True, "timing_load": 0.0}
    return out


def replicates_of(spread: float):
    def reps(v):
        noise = spread * np.random.default_rng(int(v["scores"]["a"]["fid"] * 10)).normal(size=500)
        return {f"{net}/{m}": v["scores"][net][m] + noise * (1 if m == "fid" else 0.01)
                for net in ("a", "b") for m in ("fid", "accuracy")}
    return reps


def test_targets_need_both_networks_and_a_quiet_time():
    variants = family({"base": 90.0, "cca": 84.0, "cfg2": 80.0}, {"base": 0.6, "cca": 0.75, "cfg2": 0.8})
    t = family_targets(variants, "f", 0, ["a", "b"], replicates_of(0.5))
    assert t["pass_half_gap"] and t["pass_robust"] and t["pass_all"] and t["time"]["ratio"] == 0.5
    variants["f_cca_0"]["scores"]["b"]["fid"] = 88.0                               # 0.2 of the gap under b only
    assert not family_targets(variants, "f", 0, ["a", "b"], replicates_of(0.5))["pass_half_gap"]
    variants["f_cca_0"]["scores"]["b"]["fid"] = 84.0
    noisy = family_targets(variants, "f", 0, ["a", "b"], replicates_of(8.0))       # same points, wide intervals
    assert noisy["pass_half_gap"] and not noisy["pass_robust"]
    variants["f_cfg2_0"]["timing_quiet"] = False
    loaded = family_targets(variants, "f", 0, ["a", "b"], replicates_of(0.5))
    assert loaded["time"]["ratio"] is None and loaded["time"]["pass"] is None and not loaded["pass_all"]


def test_seed_summary_spreads_over_seeds():
    variants = {**family({"base": 90.0, "cca": 84.0, "cfg2": 80.0}, {"base": 0.6, "cca": 0.75, "cfg2": 0.8}, 0),
                **family({"base": 91.0, "cca": 87.0, "cfg2": 81.0}, {"base": 0.6, "cca": 0.7, "cfg2": 0.8}, 1)}
    s = seed_summary(variants, "f", [0, 1], ["a", "b"], replicates_of(0.5))
    closed = s["a"]["fid_gap_closed"]
    assert closed["values"] == pytest.approx([0.6, 0.4]) and closed["mean"] == pytest.approx(0.5)
    assert closed["sd"] == pytest.approx(math.sqrt(0.02))
    assert not s["pass_half_gap_every_seed"]
