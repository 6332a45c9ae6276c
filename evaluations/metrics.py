"""The ADM evaluator's metrics as pure functions on features (numpy in, Python floats out).

- `frechet_distance`: FID / sFID between two Gaussians, scipy sqrtm with ADM's eps-offset fallback.
- `inception_score`: exp(E KL(p(y|x) || p(y))) averaged over *contiguous* splits of `split_size` (ADM: 5000).
- `precision_recall`: improved precision/recall (Kynkäänniemi et al.) as ADM's ManifoldEstimator runs it:
  squared Euclidean distances, radius = distance to the k-th neighbour (k = 3, the point itself counted at
  index 0), distances computed in fp16 with an fp32 recomputation for any block that is not finite,
  10000 x 10000 blocks.
- `RunningMoments`: streaming mean / covariance in float64 (np.cov's unbiased normalisation).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import linalg


def _matrix_sqrt(a: np.ndarray) -> np.ndarray:
    return linalg.sqrtm(a)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    If sqrtm of the product is not finite, eps is added to both diagonals and it is recomputed (with a warning);
    an imaginary part above 1e-3 on the diagonal raises ValueError, as in ADM's evaluator.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors have different lengths: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"covariances have incompatible shapes: {sigma1.shape} vs {sigma2.shape} for {mu1.shape}")
    diff = mu1 - mu2  # (D,)
    covmean = _matrix_sqrt(sigma1 @ sigma2)  # (D, D), possibly complex
    if not np.isfinite(covmean).all():
        warnings.warn(f"frechet_distance: singular product; adding {eps} to the covariance diagonals")
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _matrix_sqrt((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"frechet_distance: imaginary component {np.max(np.abs(covmean.imag)):.3g} in sqrtm")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def inception_score(logits, split_size: int = 5000) -> float:
    """Mean over contiguous splits [0:s], [s:2s], ... (the last may be shorter) of exp(mean_x KL(p(y|x) || p(y))).

    `logits` (N, C): softmax is taken here (in float64, via log-softmax so no probability underflows to log 0).
    """
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if logits.dim() != 2 or logits.shape[0] == 0:
        raise ValueError(f"inception_score: expected logits (N, C), got shape {tuple(logits.shape)}")
    if split_size < 1:
        raise ValueError(f"inception_score: split_size must be >= 1, got {split_size}")
    log_p = torch.log_softmax(logits, dim=1)  # (N, C)
    scores = []
    for start in range(0, log_p.shape[0], split_size):
        part = log_p[start:start + split_size]  # (n, C)
        log_marginal = torch.logsumexp(part, dim=0) - np.log(part.shape[0])  # (C,) log mean_x p(y|x)
        kl = (part.exp() * (part - log_marginal)).sum(dim=1).mean()  # scalar
        scores.append(float(kl.exp()))
    return float(np.mean(scores))


class RunningMoments:
    """Streaming mean and unbiased covariance of row vectors (float64, shifted by the first batch's mean)."""

    def __init__(self):
        self.count = 0
        self._shift = self._sum = self._outer = None

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64).flatten(1)  # (B, D)
        if self._shift is None:
            self._shift = x.mean(dim=0)
            self._sum = torch.zeros_like(self._shift)
            self._outer = x.new_zeros(x.shape[1], x.shape[1])
        centred = x - self._shift  # (B, D)
        self._sum += centred.sum(dim=0)
        self._outer += centred.t() @ centred  # (D, D)
        self.count += x.shape[0]

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.count}")
        mean_c = self._sum / self.count  # (D,)
        cov = (self._outer - self.count * torch.outer(mean_c, mean_c)) / (self.count - 1)  # (D, D)
        return (mean_c + self._shift).cpu().numpy(), cov.cpu().numpy()


def _sq_distances_fp32(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    norm_u = (u * u).sum(dim=1, keepdim=True)  # (n, 1)
    norm_v = (v * v).sum(dim=1)[None]  # (1, m)
    return torch.clamp_min(norm_u - 2 * (u @ v.t()) + norm_v, 0.0)  # (n, m)


def _sq_distances_fp16(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """TF's fp16 graph on any device: fp16 inputs, fp32 accumulation, fp16 rounding after every op."""
    def half(t: torch.Tensor) -> torch.Tensor:
        return t.half().float()

    u, v = half(u), half(v)  # (n, D), (m, D)
    norm_u = half(half(u * u).sum(dim=1, keepdim=True))  # (n, 1)
    norm_v = half(half(v * v).sum(dim=1))[None]  # (1, m)
    twice_dot = half(2 * half(u @ v.t()))  # (n, m)
    return torch.clamp_min(half(half(norm_u - twice_dot) + norm_v), 0.0)  # (n, m), inf where fp16 overflowed


def pairwise_sq_distances(u: torch.Tensor, v: torch.Tensor, fp16: bool = True) -> torch.Tensor:
    """Squared Euclidean distances (n, m) as float32; the fp16 result is used only if it is entirely finite."""
    if fp16:
        dist = _sq_distances_fp16(u, v)
        if torch.isfinite(dist).all():
            return dist
    return _sq_distances_fp32(u.float(), v.float())


def _as_tensor(x, device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device if device is not None else x.device, dtype=torch.float32)
    return torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)


def manifold_radii(features, k: int = 3, row_batch_size: int = 10000, col_batch_size: int = 10000,
                   fp16: bool = True, device=None) -> torch.Tensor:
    """(N,) float32 squared distance of every point to its k-th nearest neighbour (itself at index 0)."""
    feats = _as_tensor(features, device)  # (N, D)
    n = feats.shape[0]
    if n <= k:
        raise ValueError(f"precision/recall need more than k={k} feature vectors per set, got {n}")
    radii = torch.empty(n, dtype=torch.float32, device=feats.device)
    for r0 in range(0, n, row_batch_size):
        rows = feats[r0:r0 + row_batch_size]  # (r, D)
        dist = torch.cat([pairwise_sq_distances(rows, feats[c0:c0 + col_batch_size], fp16)
                          for c0 in range(0, n, col_batch_size)], dim=1)  # (r, N)
        radii[r0:r0 + rows.shape[0]] = torch.topk(dist, k + 1, dim=1, largest=False).values[:, k]
    return radii


def precision_recall(ref_feats, sample_feats, k: int = 3, row_batch_size: int = 10000,
                     col_batch_size: int = 10000, fp16: bool = True, device=None) -> tuple[float, float]:
    """(precision, recall): precision = share of samples inside some reference k-NN ball, recall = share of
    references inside some sample k-NN ball (balls closed: distance <= radius), as ADM's evaluate_pr."""
    ref = _as_tensor(ref_feats, device)  # (N1, D)
    sample = _as_tensor(sample_feats, device)  # (N2, D)
    if ref.dim() != 2 or sample.dim() != 2 or ref.shape[1] != sample.shape[1]:
        raise ValueError(f"precision_recall: need (N, D) features of equal D, got {tuple(ref.shape)}, "
                         f"{tuple(sample.shape)}")
    radii_ref = manifold_radii(ref, k, row_batch_size, col_batch_size, fp16, device)  # (N1,)
    radii_sample = manifold_radii(sample, k, row_batch_size, col_batch_size, fp16, device)  # (N2,)
    ref_covered = torch.zeros(ref.shape[0], dtype=torch.bool, device=ref.device)
    sample_covered = torch.zeros(sample.shape[0], dtype=torch.bool, device=ref.device)
    for r0 in range(0, ref.shape[0], row_batch_size):
        r1 = r0 + row_batch_size
        for c0 in range(0, sample.shape[0], col_batch_size):
            c1 = c0 + col_batch_size
            dist = pairwise_sq_distances(ref[r0:r1], sample[c0:c1], fp16)  # (r, c)
            ref_covered[r0:r1] |= (dist <= radii_sample[None, c0:c1]).any(dim=1)
            sample_covered[c0:c1] |= (dist <= radii_ref[r0:r1, None]).any(dim=0)
    return float(sample_covered.double().mean()), float(ref_covered.double().mean())
