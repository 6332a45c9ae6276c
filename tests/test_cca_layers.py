"""cca.layers: the shared DropPath, the KV cache both samplers write, and the low-resolution upsampling conv."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cca.layers import DropPath, KVCache, nearest_upsample_conv


@pytest.mark.parametrize("shape", [(2, 5, 3, 3), (1, 8, 4, 7), (3, 16, 6, 6)])
def test_nearest_upsample_conv_equals_upsample_then_conv(shape):
    torch.manual_seed(0)
    B, C, H, W = shape
    conv = torch.nn.Conv2d(C, C + 2, 3, padding=1)
    x = torch.randn(B, C, H, W, requires_grad=True)
    want = conv(F.interpolate(x, scale_factor=2, mode="nearest"))
    got = nearest_upsample_conv(x, conv)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    grads_want = torch.autograd.grad(want.square().sum(), (x, conv.weight, conv.bias))
    grads_got = torch.autograd.grad(got.square().sum(), (x, conv.weight, conv.bias))
    for a, b in zip(grads_got, grads_want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


def test_drop_path_scales_kept_rows_and_is_identity_in_eval():
    torch.manual_seed(0)
    layer = DropPath(0.25)
    x = torch.ones(4000, 3, 2)
    y = layer(x)
    per_row = y[:, 0, 0]
    assert set(per_row.unique().tolist()) == {0.0, torch.tensor(1 / 0.75).item()}   # float32 1/keep
    assert torch.equal(y, per_row[:, None, None].expand_as(y))        # whole rows are dropped or kept
    assert abs((per_row == 0).float().mean().item() - 0.25) < 0.03
    assert layer.eval()(x) is x and DropPath(0.0).train()(x) is x


def test_kv_cache_writes_slices_and_positions():
    cache = KVCache(2, 3, 4, 10, 8)
    assert cache.k is None                                            # allocated at the first write
    k, v = torch.randn(3, 4, 5, 8), torch.randn(3, 4, 5, 8, dtype=torch.float64)
    ks, vs = cache.write(1, 2, k, v)
    assert ks.shape == (3, 4, 7, 8) and cache.v.dtype == torch.float64   # keys and values keep their dtypes
    assert torch.equal(ks[:, :, 2:], k) and torch.equal(vs[:, :, 2:], v)
    assert ks.data_ptr() == cache.k[1].data_ptr()                     # views, nothing copied out
    whole_k, _ = cache.write_at(0, torch.tensor([9, 0]), k[:, :, :2], v[:, :, :2])
    assert whole_k.shape == (3, 4, 10, 8)
    assert torch.equal(whole_k[:, :, 9], k[:, :, 0]) and torch.equal(whole_k[:, :, 0], k[:, :, 1])
    head = cache.first_rows(2)
    assert head.rows == 2 and head.k.data_ptr() == cache.k.data_ptr()
    with pytest.raises(ValueError, match="3 rows x 10 positions"):
        cache.write(0, 8, k, v)


def test_zeroed_kv_cache_with_dtype_is_allocated_at_once():
    cache = KVCache(1, 2, 1, 4, 2, dtype=torch.bfloat16, zeroed=True)
    assert cache.k.dtype == torch.bfloat16 and not cache.k.any() and not cache.v.any()


def test_kv_cache_prefix_key_mask_follows_first_rows():
    cache = KVCache(1, 3, 1, 6, 2, dtype=torch.float32)
    cache.mask_prefix_keys(torch.tensor([[False, True], [True, True], [False, False]]))
    assert cache.key_mask.tolist()[0] == [False, True, True, True, True, True]
    assert cache.first_rows(2).key_mask.shape == (2, 6) and not cache.first_rows(1).key_mask[0, 0]
