"""Pluggable feature networks and the one function that turns two image sets into all five metrics.

A feature network is anything with
    name: str                       # printed in the header and stored in saved stats
    weights_sha256: str | None      # sha256 of the weight file it was loaded from (None: random / unknown)
    __call__(images) -> dict        # images: uint8 torch tensor (B, H, W, C) on the evaluation device
returning float tensors {'pool': (B, D)} plus optionally {'spatial': (B, S)} (sFID) and {'logits': (B, C)} (IS).
`evaluations.inception.InceptionV3` is the ADM one; the Fashion-MNIST miniature plugs in a small classifier:

    net = MyCNN(...)                                  # an nn.Module returning the dict above
    net.name, net.weights_sha256 = "fmnist-cnn", file_sha256("cnn.safetensors")
    compute_all_metrics(ref_images, sample_images, net, is_split_size=1000)
"""
from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from tqdm.auto import tqdm

from evaluations import metrics, npz_io
from evaluations.inception import NET_NAME as ADM_INCEPTION_NAME


@runtime_checkable
class FeatureNet(Protocol):
    name: str
    weights_sha256: str | None

    def __call__(self, images: torch.Tensor) -> Mapping[str, torch.Tensor]: ...


@dataclass
class FeatureSet:
    """Features of one image set: pool features (kept for precision/recall) and Gaussian statistics."""
    pool: np.ndarray | None  # (N, D) float32; None when only precomputed statistics are known
    mu: np.ndarray  # (D,)
    sigma: np.ndarray  # (D, D)
    mu_s: np.ndarray | None = None  # (S,) spatial statistics for sFID
    sigma_s: np.ndarray | None = None  # (S, S)
    logits: np.ndarray | None = None  # (N, C) float32 for the Inception Score

    @property
    def count(self) -> int:
        return 0 if self.pool is None else self.pool.shape[0]


def net_device(net) -> torch.device:
    if isinstance(net, torch.nn.Module):
        for tensor in net.parameters():
            return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def exact_fp32(device: torch.device):
    """Disables TF32 convolutions / matmuls on CUDA while extracting (TF's graph ran in true fp32)."""
    if device.type != "cuda":
        yield
        return
    if hasattr(torch.backends.cudnn, "conv"):  # torch >= 2.9: per-backend precision API
        flags = (torch.backends.cudnn.conv, torch.backends.cuda.matmul)
        attr, exact = "fp32_precision", "ieee"
    else:
        flags = (torch.backends.cudnn, torch.backends.cuda.matmul)
        attr, exact = "allow_tf32", False
    saved = [getattr(f, attr) for f in flags]
    for f in flags:
        setattr(f, attr, exact)
    try:
        yield
    finally:
        for f, value in zip(flags, saved):
            setattr(f, attr, value)


def extract_features(net: FeatureNet, batches: Iterable[np.ndarray], *, device=None, total: int | None = None,
                     progress: bool = False, desc: str = "features") -> FeatureSet:
    """Runs `net` over uint8 (b, H, W, C) numpy batches; statistics are accumulated in float64 as it goes."""
    dev = torch.device(device) if device is not None else net_device(net)
    pool_chunks, logit_chunks = [], []
    pool_moments, spatial_moments = metrics.RunningMoments(), metrics.RunningMoments()
    with torch.inference_mode(), exact_fp32(dev):
        for batch in tqdm(batches, total=total, disable=not progress, desc=desc, unit="batch"):
            images = torch.from_numpy(np.array(batch, dtype=np.uint8, copy=True)).to(dev)  # (b, H, W, C) uint8
            out = net(images)
            if not isinstance(out, Mapping) or "pool" not in out:
                raise TypeError(f"feature net {getattr(net, 'name', net)!r} must return a dict with 'pool'")
            pool = out["pool"].float().flatten(1)  # (b, D)
            pool_moments.update(pool)
            pool_chunks.append(pool.cpu().numpy())
            if out.get("spatial") is not None:
                spatial_moments.update(out["spatial"].float().flatten(1))  # (b, S)
            if out.get("logits") is not None:
                logit_chunks.append(out["logits"].float().cpu().numpy())  # (b, C)
    if pool_moments.count < 2:
        raise npz_io.InputError(f"need at least 2 images to compute statistics, got {pool_moments.count}")
    mu, sigma = pool_moments.mean_cov()
    feats = FeatureSet(pool=np.concatenate(pool_chunks), mu=mu, sigma=sigma)
    if spatial_moments.count:
        if spatial_moments.count != pool_moments.count:
            raise TypeError("feature net returned 'spatial' for some batches only")
        feats.mu_s, feats.sigma_s = spatial_moments.mean_cov()
    if logit_chunks:
        feats.logits = np.concatenate(logit_chunks)
    return feats


def _array_batches(images: np.ndarray, batch_size: int):
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


def _check_array(images: np.ndarray, what: str) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
            or images.shape[-1] not in (1, 3):
        got = f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}"
        raise npz_io.InputError(f"{what}: expected uint8 images (N, H, W, 3), got {got}")


def features_of(source, net: FeatureNet, *, what: str, batch_size: int = 64, device=None,
                progress: bool = False) -> FeatureSet:
    """FeatureSet from a FeatureSet (as is), a uint8 (N, H, W, C) array, or an .npz path (streamed arr_0)."""
    if isinstance(source, FeatureSet):
        return source
    if isinstance(source, (str, Path)):
        info = npz_io.inspect_images(source)
        batches = npz_io.iter_image_batches(info, batch_size)
        total = -(-info.count // batch_size)
    else:
        _check_array(source, what)
        batches, total = _array_batches(source, batch_size), -(-len(source) // batch_size)
    return extract_features(net, batches, device=device, total=total, progress=progress, desc=what)


def _image_size(source) -> tuple[int, int] | None:
    if isinstance(source, (str, Path)):
        return npz_io.inspect_images(source, scan_range=False).size
    return None if isinstance(source, FeatureSet) else tuple(source.shape[1:3])


def input_warnings(ref, sample) -> None:
    """Warns about a class-sorted sample file (wrong IS) and about reference / sample resolutions that differ."""
    if isinstance(sample, (str, Path)):
        labels = npz_io.read_labels(sample)
        if labels is not None and labels.ndim == 1 and len(np.unique(labels)) > 1 and np.all(np.diff(labels) >= 0):
            warnings.warn(f"{sample}: arr_1 labels are sorted by class; ADM's Inception Score uses contiguous "
                          f"splits, so the IS will be wrong (shuffle the samples)")
    ref_size, sample_size = _image_size(ref), _image_size(sample)
    if ref_size and sample_size and ref_size != sample_size:
        warnings.warn(f"reference images are {ref_size[0]}x{ref_size[1]} but samples are "
                      f"{sample_size[0]}x{sample_size[1]}; the metrics compare different resolutions")


def check_stats_provenance(stats: dict, net: FeatureNet, path) -> None:
    made_with = stats.get("feature_net") or ADM_INCEPTION_NAME  # OpenAI's files carry no name: ADM Inception
    if made_with != net.name:
        raise npz_io.InputError(f"{path}: precomputed mu/sigma come from {made_with!r}, not {net.name!r}; "
                                f"pass --recompute-ref-stats")


def apply_precomputed_stats(feats: FeatureSet, stats: dict, net: FeatureNet, path) -> FeatureSet:
    """Replaces the reference statistics with `stats` read from `path`, if they were made by the same network."""
    check_stats_provenance(stats, net, path)
    if stats["mu"].shape != feats.mu.shape:
        raise npz_io.InputError(f"{path}: precomputed mu has shape {stats['mu'].shape}, features have "
                                f"{feats.mu.shape}")
    feats.mu, feats.sigma = stats["mu"], stats["sigma"]
    if feats.mu_s is not None:
        if stats.get("mu_s") is None or stats["mu_s"].shape != feats.mu_s.shape:
            raise npz_io.InputError(f"{path}: precomputed mu_s missing or of the wrong size; "
                                    f"pass --recompute-ref-stats")
        feats.mu_s, feats.sigma_s = stats["mu_s"], stats["sigma_s"]
    return feats


def _safe_fid(mu1, sigma1, mu2, sigma2, what: str) -> float:
    try:
        return metrics.frechet_distance(mu1, sigma1, mu2, sigma2)
    except ValueError as e:
        warnings.warn(f"{what}: {e}; reporting nan")
        return float("nan")


def compute_all_metrics(ref, sample, feature_net: FeatureNet, *, batch_size: int = 64, device=None,
                        is_split_size: int = 5000, k: int = 3, pr_batch_size: int = 10000,
                        use_ref_stats: bool = True, progress: bool = False) -> dict:
    """IS, FID, sFID, precision, recall of `sample` against `ref`, as ADM's evaluator computes them.

    ref / sample: .npz path (streamed `arr_0`; a ref file's precomputed mu/sigma/mu_s/sigma_s are used when
    `use_ref_stats`), a uint8 (N, H, W, C) array, or a FeatureSet from `features_of`.
    Returns {'inception_score', 'fid', 'sfid', 'precision', 'recall'}; a metric is None when the network
    lacks the output it needs ('logits' for IS, 'spatial' for sFID).
    """
    dev = torch.device(device) if device is not None else net_device(feature_net)
    if not isinstance(sample, (str, Path, FeatureSet)):
        _check_array(sample, "sample")
    if not isinstance(ref, (str, Path, FeatureSet)):
        _check_array(ref, "reference")
    input_warnings(ref, sample)
    ref_feats = features_of(ref, feature_net, what="reference", batch_size=batch_size, device=dev,
                            progress=progress)
    if isinstance(ref, (str, Path)) and use_ref_stats:
        stats = npz_io.read_precomputed_stats(ref)
        if stats is not None:
            ref_feats = apply_precomputed_stats(ref_feats, stats, feature_net, ref)
    sample_feats = features_of(sample, feature_net, what="sample", batch_size=batch_size, device=dev,
                               progress=progress)
    results = {"inception_score": None, "fid": None, "sfid": None, "precision": None, "recall": None}
    if sample_feats.logits is not None:
        n = len(sample_feats.logits)
        if n < is_split_size:
            raise npz_io.InputError(f"sample has {n} images, fewer than one Inception Score split "
                                    f"(--is-split-size {is_split_size})")
        if n % is_split_size:
            warnings.warn(f"sample: {n} images is not a multiple of --is-split-size {is_split_size}; ADM averages "
                          f"the short last split ({n % is_split_size} images) like the others")
        results["inception_score"] = metrics.inception_score(sample_feats.logits, is_split_size)
    results["fid"] = _safe_fid(sample_feats.mu, sample_feats.sigma, ref_feats.mu, ref_feats.sigma, "FID")
    if sample_feats.mu_s is not None and ref_feats.mu_s is not None:
        results["sfid"] = _safe_fid(sample_feats.mu_s, sample_feats.sigma_s, ref_feats.mu_s, ref_feats.sigma_s,
                                    "sFID")
    if ref_feats.pool is not None and sample_feats.pool is not None:
        precision, recall = metrics.precision_recall(ref_feats.pool, sample_feats.pool, k=k,
                                                     row_batch_size=pr_batch_size, col_batch_size=pr_batch_size,
                                                     device=dev)
        results["precision"], results["recall"] = precision, recall
    return results


def load_feature_net(spec: str, weights: str | None = None) -> FeatureNet:
    """`package.module:factory` -> factory(weights) (weights: a path or None); must satisfy FeatureNet."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise npz_io.InputError(f"--feature-net: expected MODULE:FACTORY, got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise npz_io.InputError(f"--feature-net: cannot import {spec!r} ({e})") from None
    net = factory(weights)
    if not isinstance(net, FeatureNet):
        raise npz_io.InputError(f"--feature-net: {spec} returned {type(net).__name__}, which lacks name / "
                                f"weights_sha256 / __call__")
    return net


class PixelFeatureNet(torch.nn.Module):
    """Weight-free example of the FeatureNet interface (and a fast stand-in for smoke tests; not a quality
    measure): 'pool' = 4x4 average-pooled RGB (48), 'spatial' = 3x3 pooled first channel (9),
    'logits' = a fixed random projection of 'pool' onto `classes` classes."""

    def __init__(self, classes: int = 10, seed: int = 0):
        super().__init__()
        self.name = "pixel-features"
        self.weights_sha256 = None
        projection = torch.randn(48, classes, generator=torch.Generator().manual_seed(seed)) * 4
        self.register_buffer("projection", projection)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.permute(0, 3, 1, 2).float() / 255.0  # (B, C, H, W) in [0, 1]
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # (B, 3, H, W)
        pool = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)  # (B, 48)
        spatial = torch.nn.functional.adaptive_avg_pool2d(x[:, :1], 3).flatten(1)  # (B, 9)
        return {"pool": pool, "spatial": spatial, "logits": (pool - 0.5) @ self.projection}  # logits (B, classes)


def pixel_feature_net(weights: str | None = None) -> PixelFeatureNet:
    """`--feature-net evaluations.features:pixel_feature_net` factory."""
    if weights is not None:
        raise npz_io.InputError("--feature-weights: pixel_feature_net has no weights")
    return PixelFeatureNet()
