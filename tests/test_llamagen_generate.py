"""Static-cache generation: equals the uncached recomputation, guidance-free runs B rows, no state change."""
from __future__ import annotations

import pytest
import torch

from LlamaGen import ModelArgs, Transformer, generate
from LlamaGen.generate import generate_uncached


def _model(**overrides) -> Transformer:
    args = dict(dim=32, n_layer=2, n_head=4, n_kv_head=None, vocab_size=40, block_size=16, num_classes=6,
                token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0, class_dropout_prob=0.0)
    args.update(overrides)
    torch.manual_seed(1)
    model = Transformer(ModelArgs(**args))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.4)
    return model.eval()


@pytest.mark.parametrize("cfg_scale,cfg_interval,n_kv_head", [(1.0, -1, None), (3.0, -1, None), (2.5, 4, None),
                                                               (3.0, -1, 2)])
def test_cached_greedy_equals_uncached(cfg_scale, cfg_interval, n_kv_head):
    model = _model(n_kv_head=n_kv_head)
    cond = torch.tensor([0, 3, 5, 1])
    logs_a, logs_b = [], []
    a = generate(model, cond, 16, cfg_scale=cfg_scale, cfg_interval=cfg_interval, sample_logits=False,
                 logits_hook=lambda i, lg: logs_a.append(lg))
    b = generate_uncached(model, cond, 16, cfg_scale=cfg_scale, cfg_interval=cfg_interval, sample_logits=False,
                          logits_hook=lambda i, lg: logs_b.append(lg))
    assert a.shape == (4, 16) and a.dtype == torch.int64
    assert torch.equal(a, b)
    torch.testing.assert_close(torch.stack(logs_a), torch.stack(logs_b), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n_kv_head", [None, 2])
def test_masked_whole_cache_equals_filled_prefix(n_kv_head):
    """The CUDA-graph form (whole zeroed cache under a mask) and the eager form (only the filled prefix of an
    unzeroed cache, here poisoned with NaN to prove nothing past it is read) give the same logits at every step."""
    from LlamaGen.gpt import kv_cache_for
    model = _model(n_kv_head=n_kv_head)
    codes = torch.randint(40, (3, 15), generator=torch.Generator().manual_seed(0))
    rows = torch.tensor([0, 4, 6])
    masked = kv_cache_for(model, 3, 16)
    prefix = kv_cache_for(model, 3, 16, zeroed=False)
    prefix.k.fill_(float("nan")), prefix.v.fill_(float("nan"))
    with torch.no_grad():
        emb = model.cls_embedding.embedding_table(rows)[:, None]                    # (3, 1, dim)
        a = model.forward_cached(emb, torch.arange(1), masked)
        b = model.forward_cached(emb, torch.arange(1), prefix, kv_len=1)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        chunk = model.tok_embeddings(codes[:, :5])                                  # a 5-token chunk after it
        a = model.forward_cached(chunk, torch.arange(1, 6), masked)
        b = model.forward_cached(chunk, torch.arange(1, 6), prefix, kv_len=6)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        for t in range(5, 15):                                                      # then one token at a time
            x = model.tok_embeddings(codes[:, t:t + 1])
            a = model.forward_cached(x, torch.tensor([t + 1]), masked)
            b = model.forward_cached(x, torch.tensor([t + 1]), prefix, kv_len=t + 2)
            assert torch.isfinite(b).all()
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        full, _ = model(codes, rows)                                                # teacher forcing agrees
        torch.testing.assert_close(full[:, -1], b[:, -1], atol=1e-4, rtol=1e-4)


def test_top_k_one_sampling_equals_greedy():
    model = _model()
    cond = torch.tensor([2, 4])
    greedy = generate(model, cond, 16, cfg_scale=2.0, sample_logits=False)
    assert torch.equal(generate(model, cond, 16, cfg_scale=2.0, top_k=1), greedy)


def test_guidance_free_runs_only_conditional_rows():
    model = _model()
    seen: list[int] = []
    original = model.forward_cached

    def counting(x, *rest, **kw):
        seen.append(x.shape[0])
        return original(x, *rest, **kw)

    model.forward_cached = counting          # instance attribute: only this model is affected
    cond = torch.tensor([1, 2, 3])
    generate(model, cond, 16, cfg_scale=1.0)
    assert seen == [3] * 16
    seen.clear()
    generate(model, cond, 16, cfg_scale=4.0)
    assert seen == [6] * 16
    seen.clear()
    generate(model, cond, 16, cfg_scale=4.0, cfg_interval=2)   # guidance stops after decode step 2
    assert seen == [6] * 4 + [3] * 12


def test_generation_leaves_state_dict_unchanged():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generate(model, torch.tensor([0, 1]), 16, cfg_scale=3.0, top_k=5, top_p=0.9, temperature=0.8)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    fresh = _model()
    fresh.load_state_dict(after, strict=True)


def test_sampling_is_seeded_and_respects_top_k():
    model = _model()
    cond = torch.tensor([0, 1, 2, 3])
    a = generate(model, cond, 16, top_k=3, generator=torch.Generator().manual_seed(7))
    b = generate(model, cond, 16, top_k=3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    steps = []
    generate(model, cond, 16, top_k=3, generator=torch.Generator().manual_seed(7),
             logits_hook=lambda i, lg: steps.append(lg))
    top3 = torch.stack(steps, dim=1).topk(3, dim=-1).indices                 # (B, 16, 3)
    assert (top3 == a[..., None]).any(-1).all()


def test_bad_inputs():
    model = _model()
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, torch.tensor([0]), 17)
    with pytest.raises(ValueError, match="cond"):
        generate(model, torch.tensor([[0]]), 4)
    no_null = _model(null_class_row=False)
    with pytest.raises(ValueError, match="unconditional"):
        generate(no_null, torch.tensor([0]), 4, cfg_scale=2.0)
    generate(no_null, torch.tensor([0]), 4, cfg_scale=1.0)


def test_bf16_generation_runs():
    model = _model().to(torch.bfloat16)
    tokens = generate(model, torch.tensor([0, 1]), 16, cfg_scale=2.0, top_k=8)
    assert tokens.shape == (2, 16) and 0 <= int(tokens.min()) and int(tokens.max()) < 40


def test_benchmark_functions_report_ratios():
    from benchmarks.bench_llamagen import bench_all, bench_model, length_ratio
    res = bench_all(repeats=1, dim=32, n_layer=1, n_head=2, vocab_size=32, cfg_batch=2, cfg_tokens=4, kv_batch=2,
                    kv_tokens=4)
    for value in (res["sampling"]["ratio"], res["kv"]["cached_over_uncached"], res["kv"]["twice_over_once"]):
        assert 0 < value < float("inf")
    model = bench_model(dim=32, n_layer=1, n_head=2, vocab_size=32, block_size=16)
    with pytest.raises(ValueError, match="block_size"):
        length_ratio(model, batch=2, tokens=9, repeats=1)


def test_rope_forms_agree():
    """Eager mode rotates with one complex product, compiled code with the real form inductor can fuse."""
    from LlamaGen.gpt import precompute_freqs_cis_2d, rope_complex, rope_real
    freqs = precompute_freqs_cis_2d(4, 16)[:9]                                    # (9, 8, 2)
    x = torch.randn(3, 9, 2, 16, generator=torch.Generator().manual_seed(0))
    a, b = rope_complex(x, freqs), rope_real(x, freqs)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a[:, 1:].norm(dim=-1), x[:, 1:].norm(dim=-1), atol=1e-5, rtol=1e-5)  # rotations
    assert not a[:, 0].any()          # the class token's table row is all zeros, as in the original


@pytest.mark.parametrize("n_kv_head", [None, 2])
def test_seeded_sampling_cached_equals_uncached(n_kv_head):
    """The CPU decode path (stacked gate/up weights, two-matmul attention for one query) draws the same tokens
    as the teacher-forcing recomputation from the same generator."""
    model = _model(n_kv_head=n_kv_head)
    cond = torch.tensor([0, 3, 5])
    a = generate(model, cond, 16, generator=torch.Generator().manual_seed(5))
    b = generate_uncached(model, cond, 16, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and len(set(a.flatten().tolist())) > 4


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (6, 1)])
def test_one_query_attention_equals_sdpa(heads, kv_heads):
    from LlamaGen.gpt import one_query_attention
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, h, n, 8, generator=g) for h, n in ((heads, 1), (kv_heads, 7), (kv_heads, 7)))
    mask = torch.rand(3, 1, 1, 7, generator=g) < 0.6
    mask[..., -1] = True                                                         # the query's own key
    rep = heads // kv_heads
    big_k, big_v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    for m in (None, mask):
        want = torch.nn.functional.scaled_dot_product_attention(q, big_k, big_v, attn_mask=m)
        torch.testing.assert_close(one_query_attention(q, k, v, m), want, atol=1e-6, rtol=1e-6)


def test_stacked_gate_up_equals_separate_projections():
    from LlamaGen.gpt import stacked_gate_up
    model = _model()
    x = torch.randn(5, 1, 32, generator=torch.Generator().manual_seed(0))
    ffn, stacked = model.layers[1].feed_forward, stacked_gate_up(model)[1]
    assert stacked.shape == (32, 2 * ffn.w1.out_features)
    torch.testing.assert_close(ffn(x, stacked), ffn(x), atol=1e-5, rtol=1e-5)
    assert list(model.state_dict()) == list(_model().state_dict())              # nothing was registered
