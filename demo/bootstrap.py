"""Bootstrap intervals for the miniature's scores: resample each variant's samples (not the reference) with
replacement, many times at once.

A replicate is a vector of multiplicities over the n samples (multinomial, summing to n). Features are computed
once; a replicate's Gaussian is the weighted mean and covariance of those features, and its Fréchet distance to the
fixed reference uses tr((S_r S)^(1/2)) = sum of sqrt(eigenvalues of R S R) with R = S_r^(1/2) (R S R is symmetric,
so a batched ``eigvalsh`` does every replicate in one call). Variants are sampled independently, so replicate b of
each variant together form one joint replicate of any score built from several variants (a "gap closed" ratio).
"""
from __future__ import annotations

import zlib

import numpy as np
import torch


def replicate_counts(n: int, replicates: int, seed: int, stream: str) -> np.ndarray:
    """(replicates, n) int multiplicities, each row a resample of n items; ``stream`` (e.g. a variant name) gives
    every variant its own independent draws."""
    rng = np.random.default_rng([seed, zlib.crc32(stream.encode())])
    picks = rng.integers(0, n, (replicates, n)) + n * np.arange(replicates)[:, None]     # (B, n) flat indices
    return np.bincount(picks.ravel(), minlength=replicates * n).reshape(replicates, n)


def psd_sqrt(sigma: np.ndarray) -> torch.Tensor:
    """Symmetric square root (D, D) float64 of a covariance (negative rounding-error eigenvalues set to 0)."""
    vals, vecs = torch.linalg.eigh(torch.as_tensor(sigma, dtype=torch.float64))
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def weighted_moments(feats: np.ndarray, counts: np.ndarray, chunk: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """feats (n, D), counts (B, n) -> (means (B, D), unbiased covariances (B, D, D)), float64.

    Every replicate's second moment is one row of counts @ (per-sample outer products, upper triangle): a single
    float32 GEMM of B x n x D(D+1)/2 multiply-adds, run over chunks of samples. Features are centred at their mean
    first, which keeps float32 accurate to ~1e-6 relative."""
    x64 = torch.as_tensor(feats, dtype=torch.float64)                             # (n, D)
    centre = x64.mean(0)                                                           # (D,)
    x = (x64 - centre).float()                                                     # (n, D)
    w = torch.as_tensor(counts, dtype=torch.float32)                               # (B, n)
    n, d = float(counts[0].sum()), x.shape[1]
    rows, cols = torch.triu_indices(d, d)
    upper = torch.zeros(len(w), len(rows), dtype=torch.float64)                    # (B, D(D+1)/2)
    for s in range(0, len(x), chunk):
        xs = x[s:s + chunk]                                                        # (c, D)
        outer = (xs[:, rows] * xs[:, cols])                                        # (c, D(D+1)/2)
        upper += (w[:, s:s + chunk] @ outer).double()
    second = torch.zeros(len(w), d, d, dtype=torch.float64)
    second[:, rows, cols] = upper / n
    second[:, cols, rows] = upper / n                                              # (B, D, D)
    means = (w.double() @ x.double()) / n                                          # (B, D), centred
    covs = (second - means[:, :, None] * means[:, None, :]) * (n / (n - 1))
    return means + centre, covs


def bootstrap_fid(feats: np.ndarray, counts: np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray) -> np.ndarray:
    """(B,) Fréchet distances between each replicate's Gaussian and the reference's (mu, sigma)."""
    mu, cov = weighted_moments(feats, counts)                                      # (B, D), (B, D, D)
    root = psd_sqrt(ref_sigma)                                                     # (D, D)
    mid = root @ cov @ root                                                        # (B, D, D), symmetric
    mid = (mid + mid.transpose(1, 2)) / 2
    trace_sqrt = torch.linalg.eigvalsh(mid).clamp_min(0).sqrt().sum(-1)           # (B,)
    ref_mu_t, ref_sigma_t = torch.as_tensor(ref_mu, dtype=torch.float64), torch.as_tensor(ref_sigma,
                                                                                           dtype=torch.float64)
    diff = ((mu - ref_mu_t) ** 2).sum(-1)                                          # (B,)
    tr = cov.diagonal(dim1=1, dim2=2).sum(-1) + ref_sigma_t.trace()                # (B,)
    return (diff + tr - 2 * trace_sqrt).numpy()


def bootstrap_mean(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(B,) weighted means of per-sample ``values`` (n,), e.g. 0/1 hits -> accuracy replicates."""
    return counts @ np.asarray(values, dtype=np.float64) / counts[0].sum()


def interval(replicates, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the replicates (nan-aware: a replicate whose ratio is undefined is left out)."""
    reps = np.asarray(replicates, dtype=np.float64)
    if not np.isfinite(reps).any():
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.nanpercentile(np.where(np.isfinite(reps), reps, np.nan), [tail, 100 - tail])
    return float(lo), float(hi)


def gap_closed(base, tuned, guided: list, lower_is_better: bool):
    """Share of the gap from ``base`` to the best of ``guided`` that ``tuned`` closes. Works elementwise on
    scalars or on aligned replicate arrays (the best guided value is then taken per replicate); nan where the
    guided side is no better than ``base``."""
    guided = np.stack([np.asarray(g, dtype=np.float64) for g in guided])
    base, tuned = np.asarray(base, dtype=np.float64), np.asarray(tuned, dtype=np.float64)
    best = guided.min(0) if lower_is_better else guided.max(0)
    gap = base - best if lower_is_better else best - base
    gain = base - tuned if lower_is_better else tuned - base
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap > 0, gain / np.where(gap > 0, gap, 1.0), np.nan)
