"""evaluations/metrics.py: FID, IS, precision/recall against closed forms, pytorch-fid and brute force."""
import warnings

import numpy as np
import pytest
import torch

from evaluations import metrics


def random_spd(rng, d, scale=1.0):
    a = rng.standard_normal((d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


# ---------------------------------------------------------------- FID
def test_fid_of_diagonal_gaussians_matches_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    var1, var2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    got = metrics.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_fid_of_identical_gaussians_is_zero_and_scalar_inputs_work():
    rng = np.random.default_rng(1)
    sigma = random_spd(rng, 8)
    assert abs(metrics.frechet_distance(np.ones(8), sigma, np.ones(8), sigma)) < 1e-8
    assert metrics.frechet_distance(0.0, 4.0, 1.0, 1.0) == pytest.approx(1.0 + (2.0 - 1.0) ** 2)


def test_fid_matches_pytorch_fid_on_random_statistics():
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(2)
    for d in (3, 16, 64):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        s1, s2 = random_spd(rng, d), random_spd(rng, d, scale=2.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pytorch-fid passes scipy's deprecated disp=
            theirs = calculate_frechet_distance(mu1, s1, mu2, s2)
        assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(theirs, rel=1e-9)


def test_fid_singular_product_falls_back_to_eps_offset(monkeypatch):
    real_sqrt = metrics._matrix_sqrt
    calls = []

    def flaky_sqrt(a):
        calls.append(a.copy())
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrt(a)

    monkeypatch.setattr(metrics, "_matrix_sqrt", flaky_sqrt)
    sigma = np.diag([1.0, 4.0])
    with pytest.warns(UserWarning, match="singular product"):
        got = metrics.frechet_distance(np.zeros(2), sigma, np.zeros(2), sigma, eps=1e-3)
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1], (sigma + 1e-3 * np.eye(2)) @ (sigma + 1e-3 * np.eye(2)))
    # tr(2 sigma) - 2 tr(sigma + eps I) = -2 * 2 * eps
    assert got == pytest.approx(-4e-3, abs=1e-9)


def test_fid_rejects_large_imaginary_component_and_bad_shapes(monkeypatch):
    monkeypatch.setattr(metrics, "_matrix_sqrt", lambda a: a + 1j * np.eye(len(a)))
    with pytest.raises(ValueError, match="imaginary component"):
        metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="different lengths"):
        metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_running_moments_match_numpy_cov_across_batches():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((101, 5)) * 3 + 1000.0  # large offset: the shift keeps float64 accurate
    moments = metrics.RunningMoments()
    for start in range(0, 101, 17):
        moments.update(torch.from_numpy(x[start:start + 17]))
    mu, cov = moments.mean_cov()
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- Inception Score
def hand_inception_score(logits, split):
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scores = []
    for i in range(0, len(p), split):
        part = p[i:i + split]
        py = part.mean(0, keepdims=True)
        scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), 1))))
    return np.mean(scores)


def test_inception_score_uniform_and_confident_predictions():
    assert metrics.inception_score(np.zeros((20, 7)), split_size=5) == pytest.approx(1.0)
    confident = np.full((12, 4), -60.0)
    confident[np.arange(12), np.arange(12) % 4] = 60.0  # each split of 4 covers all 4 classes once
    assert metrics.inception_score(confident, split_size=4) == pytest.approx(4.0, rel=1e-6)


def test_inception_score_uses_contiguous_splits_and_a_short_last_split():
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((10, 6)) * 2
    got = metrics.inception_score(logits, split_size=4)  # splits [0:4], [4:8], [8:10]
    assert got == pytest.approx(hand_inception_score(logits, 4), rel=1e-10)
    assert got != pytest.approx(metrics.inception_score(logits, split_size=10), rel=1e-6)


def test_class_sorted_samples_lower_the_inception_score():
    # 2 classes, perfectly confident: shuffled splits see both classes (IS 2), class-sorted splits see one (IS 1)
    labels = np.repeat([0, 1], 8)
    logits = np.where(np.eye(2)[labels] > 0, 50.0, -50.0)
    assert metrics.inception_score(logits, split_size=8) == pytest.approx(1.0, rel=1e-6)
    shuffled = logits[np.random.default_rng(0).permutation(16)]
    assert metrics.inception_score(shuffled, split_size=16) == pytest.approx(2.0, rel=1e-6)


# ---------------------------------------------------------------- precision / recall
def brute_force_pr(ref, sample, k=3):
    def sq(a, b):
        return ((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1)

    r_ref = np.sort(sq(ref, ref), axis=1)[:, k]
    r_sample = np.sort(sq(sample, sample), axis=1)[:, k]
    d = sq(ref, sample)  # (N1, N2)
    precision = np.mean((d <= r_ref[:, None]).any(0))
    recall = np.mean((d <= r_sample[None, :]).any(1))
    return precision, recall


def test_precision_recall_matches_brute_force_fp32_with_small_blocks():
    rng = np.random.default_rng(5)
    ref = rng.standard_normal((40, 8)).astype(np.float32)
    sample = (rng.standard_normal((33, 8)) + 1.0).astype(np.float32)
    expected = brute_force_pr(ref, sample)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1  # a non-trivial case
    got = metrics.precision_recall(ref, sample, fp16=False)
    assert got == pytest.approx(expected, abs=1e-12)
    blocked = metrics.precision_recall(ref, sample, fp16=False, row_batch_size=7, col_batch_size=5)
    assert blocked == pytest.approx(expected, abs=1e-12)


def test_precision_recall_fp16_is_exact_on_small_integer_features():
    rng = np.random.default_rng(6)  # integers <= 4 in 8 dims: every fp16 intermediate is exact
    ref = rng.integers(0, 5, (30, 8)).astype(np.float32)
    sample = rng.integers(0, 4, (25, 8)).astype(np.float32)
    got = metrics.precision_recall(ref, sample, fp16=True, row_batch_size=9, col_batch_size=11)
    assert got == pytest.approx(brute_force_pr(ref, sample), abs=1e-12)


def test_fp16_distances_round_like_half_precision_and_fall_back_when_overflowing():
    u = torch.tensor([[0.1, 0.2, 0.3]])
    v = torch.tensor([[0.3, 0.1, 0.0]])
    d16 = metrics.pairwise_sq_distances(u, v, fp16=True)
    assert d16.dtype == torch.float32 and float(d16) == float(d16.half())  # representable in fp16
    assert float(d16) == pytest.approx(0.14, abs=2e-3)
    big = torch.full((2, 64), 100.0)  # squared norms 640000 overflow fp16 -> fp32 recomputation
    big[1] += 1.0
    d = metrics.pairwise_sq_distances(big, big, fp16=True)
    assert torch.isfinite(d).all() and float(d[0, 1]) == pytest.approx(64.0, rel=1e-3)


def test_precision_recall_with_overflowing_features_matches_brute_force():
    rng = np.random.default_rng(7)
    ref = (rng.standard_normal((20, 16)) * 30 + 300).astype(np.float32)
    sample = (rng.standard_normal((20, 16)) * 30 + 310).astype(np.float32)
    got = metrics.precision_recall(ref, sample, fp16=True)
    assert got == pytest.approx(brute_force_pr(ref, sample), abs=1e-12)


def test_manifold_radii_counts_the_point_itself_and_rejects_tiny_sets():
    pts = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]], dtype=np.float32)
    radii = metrics.manifold_radii(pts, k=3, fp16=False)
    # point 0: squared distances 0, 1, 9, 36, 100 -> index 3 is 36
    assert radii.tolist() == [36.0, 25.0, 9.0, 25.0, 81.0]
    with pytest.raises(ValueError, match="more than k=3"):
        metrics.manifold_radii(pts[:3], k=3)
