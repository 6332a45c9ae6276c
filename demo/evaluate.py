"""Scoring sample files under each feature network, with bootstrap replicates of the samples.

Per network: classifier-FID and precision / recall (k = 3) against the test split, conditional accuracy (the
share of samples whose classifier argmax is the class they were sampled for, ``arr_1``), and ``replicates``
bootstrap resamples of the samples (the same resamples for every network) for FID and accuracy: their 95 %
percentile intervals go into the scores, the replicates themselves into an npz next to the stage's result, from
which ``demo.targets`` bootstraps the gap-closed ratios across variants.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from cca.errors import UsageError
from demo.bootstrap import bootstrap_fid, bootstrap_mean, interval, replicate_counts
from evaluations.features import FeatureSet, compute_all_metrics, features_of
from evaluations.npz_io import read_labels


class Scorer:
    """The evaluation's feature networks (name -> ``evaluations.features.FeatureNet``) with their test-split
    features; ``key`` identifies networks and bootstrap settings for the stage cache."""

    def __init__(self, nets: dict, test_images_uint8: np.ndarray, key: str, replicates: int, seed: int):
        self.nets, self.key, self.replicates, self.seed = nets, key, replicates, seed
        self.refs: dict[str, FeatureSet] = {
            name: features_of(test_images_uint8, net, what=f"reference (test split, {name})", batch_size=1000)
            for name, net in nets.items()}

    def score(self, path: Path, replicates_path: Path, stream: str) -> dict:
        """{network: {'fid', 'fid_ci', 'accuracy', 'accuracy_ci', 'precision', 'recall'}} of the samples in
        ``path``; writes the replicates ('<network>/fid', '<network>/accuracy', (B,) each) to
        ``replicates_path``. ``stream`` (the variant's name) seeds its own resamples."""
        labels = read_labels(path)
        if labels is None:
            raise UsageError(f"{path}: no arr_1 labels; conditional accuracy needs them")
        counts = replicate_counts(len(labels), self.replicates, self.seed, stream)     # (B, n)
        scores, reps = {}, {}
        for name, net in self.nets.items():
            sample = features_of(str(path), net, what=f"{Path(path).name} ({name})", batch_size=1000)
            if sample.logits is None or len(sample.logits) != len(labels):
                raise UsageError(f"{path}: {len(labels)} labels but {0 if sample.logits is None else len(sample.logits)}"
                                 f" outputs of {name}")
            ref = self.refs[name]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")        # IS split-size notes; the miniature does not report IS
                point = compute_all_metrics(ref, sample, net, is_split_size=len(labels))
            hits = sample.logits.argmax(axis=1) == labels
            reps[f"{name}/fid"] = bootstrap_fid(sample.pool, counts, ref.mu, ref.sigma)
            reps[f"{name}/accuracy"] = bootstrap_mean(hits, counts)
            scores[name] = {"fid": float(point["fid"]), "fid_ci": interval(reps[f"{name}/fid"]),
                            "accuracy": float(hits.mean()), "accuracy_ci": interval(reps[f"{name}/accuracy"]),
                            "precision": float(point["precision"]), "recall": float(point["recall"])}
        tmp = replicates_path.with_name(replicates_path.name + ".tmp.npz")
        np.savez(tmp, **reps)
        os.replace(tmp, replicates_path)
        return scores


def load_replicates(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as d:
        return {k: d[k] for k in d.files}
