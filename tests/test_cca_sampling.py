import numpy as np
import pytest
import torch

from cca.sampling import (ShardedNpzWriter, balanced_labels, filter_logits, guide, sample_from_logits,
                          to_uint8_nhwc)


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    k2 = filter_logits(logits, top_k=2)
    assert torch.isinf(k2[0, 2:]).all() and torch.isfinite(k2[0, :2]).all()
    p = filter_logits(logits, top_p=0.7)          # 0.5 + 0.25 reaches 0.7: keep two
    assert torch.isfinite(p[0, :2]).all() and torch.isinf(p[0, 2:]).all()
    p = filter_logits(logits, top_p=0.8)          # needs the third
    assert torch.isfinite(p[0, :3]).all() and torch.isinf(p[0, 3])
    assert torch.equal(filter_logits(logits, 0, 1.0), logits) and torch.equal(filter_logits(logits), logits)
    with pytest.raises(ValueError, match="top_p must be in"):
        filter_logits(logits, 0, 0.0)
    assert torch.isfinite(filter_logits(logits, top_p=1e-6)[0, 0])   # the best token always survives


def test_sampling_is_seeded_and_respects_top1():
    logits = torch.randn(5, 9)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = sample_from_logits(logits, top_k=4, generator=g1)
    b = sample_from_logits(logits, top_k=4, generator=g2)
    assert torch.equal(a, b)
    assert torch.equal(sample_from_logits(logits, top_k=1), logits.argmax(-1))


def _filter_by_full_sort(logits, top_k, top_p):
    """The original's recipe (top-k by the k-th value, then a full sort for the nucleus), for comparison."""
    out = logits.clone()
    if top_k > 0:
        out[out < torch.topk(out, top_k, dim=-1).values[..., -1:]] = float("-inf")
    if 0 < top_p < 1:
        srt, order = torch.sort(out, dim=-1, descending=True)
        cum = srt.softmax(-1).cumsum(-1)
        drop = cum - srt.softmax(-1) >= top_p
        out[torch.zeros_like(drop).scatter(-1, order, drop)] = float("-inf")
    return out


@pytest.mark.parametrize("top_k,top_p", [(0, 0.9), (50, 1.0), (50, 0.95), (7, 0.5), (300, 0.3), (1, 0.9)])
def test_filter_logits_matches_full_sort_recipe(top_k, top_p):
    logits = torch.randn(64, 300, generator=torch.Generator().manual_seed(top_k)) * 3
    assert torch.equal(torch.isinf(filter_logits(logits, top_k, top_p)),
                       torch.isinf(_filter_by_full_sort(logits, top_k, top_p)))


def test_inverse_cdf_draw_follows_the_distribution():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.15, 0.05, 0.0])
    logits = probs.log().expand(40000, -1)
    draws = sample_from_logits(logits, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=6).double() / len(draws)
    assert freq[1] == 0 and freq[5] == 0                       # zero-mass tokens, first and last, never drawn
    assert torch.allclose(freq, probs.double(), atol=0.01)
    # the largest uniform number still lands on a token of positive mass (not the trailing -inf one)
    import unittest.mock as mock
    with mock.patch("torch.rand", lambda *a, **k: torch.full(a[0], 1 - 2 ** -24, dtype=k.get("dtype"))):
        assert sample_from_logits(logits[:3]).tolist() == [4, 4, 4]


def test_guide_internal_form():
    c, u = torch.tensor([2.0]), torch.tensor([1.0])
    assert guide(c, u, 1.0).item() == 2.0 and guide(c, u, 3.0).item() == 4.0 and guide(c, u, 0.0).item() == 1.0


def test_balanced_labels():
    lab = balanced_labels(25, 10, seed=1)
    assert np.bincount(lab, minlength=10).max() - np.bincount(lab, minlength=10).min() <= 1
    assert np.array_equal(lab, balanced_labels(25, 10, seed=1))


def _fake_images(idx, labels):
    # image content encodes the global index, so order and coverage can be checked
    out = np.zeros((len(idx), 4, 4, 3), np.uint8)
    out[:, 0, 0, 0] = idx % 256
    out[:, 0, 0, 1] = idx // 256
    out[:, 0, 0, 2] = labels[idx]
    return out


def _run_ranks(tmp_path, labels, world, bs, limit=None):
    # all ranks make their writer (the snapshot) before any of them writes, as the barrier ensures in real runs
    writers = [ShardedNpzWriter(tmp_path, "s", labels, rank=r, world=world, batch_size=bs) for r in range(world)]
    for w in writers:
        for n, idx in enumerate(w.pending_batches()):
            if limit is not None and n >= limit:
                break
            w.save_batch(idx, _fake_images(idx, labels))


@pytest.mark.parametrize("world", [1, 3])
def test_sharded_writer_covers_every_index_once_with_resume(tmp_path, world):
    labels = balanced_labels(37, 5, seed=0)
    # first attempt: every rank dies after one batch; then a rerun with another world size completes
    _run_ranks(tmp_path, labels, world, bs=4, limit=1)
    _run_ranks(tmp_path, labels, 2, bs=5)
    path = ShardedNpzWriter(tmp_path, "s", labels).finalize()
    with np.load(path) as f:
        imgs, lab = f["arr_0"], f["arr_1"]
    assert imgs.dtype == np.uint8 and imgs.shape == (37, 4, 4, 3) and lab.dtype == np.int64
    idx = imgs[:, 0, 0, 0].astype(int) + 256 * imgs[:, 0, 0, 1].astype(int)
    assert sorted(idx.tolist()) == list(range(37))
    assert np.array_equal(lab, labels[idx]) and np.array_equal(imgs[:, 0, 0, 2], labels[idx])
    assert not np.array_equal(idx, np.arange(37))     # shuffled


def test_sharded_writer_reports_missing(tmp_path):
    labels = balanced_labels(10, 2)
    w = ShardedNpzWriter(tmp_path, "s", labels, rank=0, world=2, batch_size=2)
    for idx in w.pending_batches():
        w.save_batch(idx, _fake_images(idx, labels))
    with pytest.raises(RuntimeError, match="5 of 10 samples missing"):
        ShardedNpzWriter(tmp_path, "s", labels).finalize()
    with pytest.raises(ValueError, match="uint8"):
        ShardedNpzWriter(tmp_path, "s", labels).save_batch(np.arange(2), np.zeros((2, 4, 4, 3), np.float32))


def test_to_uint8_nhwc():
    x = torch.tensor([0.0, 0.5, 1.0, 2.0]).reshape(1, 1, 2, 2).expand(1, 3, 2, 2)
    out = to_uint8_nhwc(x)
    assert out.shape == (1, 2, 2, 3) and out.dtype == np.uint8
    assert out[0, :, :, 0].ravel().tolist() == [0, 128, 255, 255]
    assert to_uint8_nhwc(x * 2 - 1, (-1, 1))[0, 0, 1, 0] == 128
