"""Scoring one sample file with the evaluations package and the miniature's classifier as feature network.

classifier-FID against the test split, precision / recall (k = 3), and conditional accuracy: the share of samples
whose classifier argmax equals the class they were sampled for (``arr_1``).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from cca.errors import UsageError
from evaluations.features import FeatureSet, compute_all_metrics, features_of
from evaluations.npz_io import read_labels


def reference_features(net, test_images_uint8: np.ndarray) -> FeatureSet:
    return features_of(test_images_uint8, net, what="reference (test split)", batch_size=1000)


def evaluate_npz(path: str | Path, net, ref: FeatureSet) -> dict:
    """{'fid', 'accuracy', 'precision', 'recall'} of the samples in ``path``."""
    labels = read_labels(path)
    if labels is None:
        raise UsageError(f"{path}: no arr_1 labels; conditional accuracy needs them")
    sample = features_of(str(path), net, what=Path(path).name, batch_size=1000)
    if sample.logits is None or len(sample.logits) != len(labels):
        raise UsageError(f"{path}: {len(labels)} labels but {0 if sample.logits is None else len(sample.logits)} "
                         f"classifier outputs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # IS split-size notes; the miniature does not report IS
        scores = compute_all_metrics(ref, sample, net, is_split_size=len(labels))
    accuracy = float((sample.logits.argmax(axis=1) == labels).mean())
    return {"fid": float(scores["fid"]), "accuracy": accuracy, "precision": float(scores["precision"]),
            "recall": float(scores["recall"])}
