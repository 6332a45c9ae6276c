"""The static-KV-cache sampler: equals uncached step-by-step decoding, runs B rows (not 2B) without guidance,
never grows its cache, and is reproducible with g_seed."""
from __future__ import annotations

import pytest
import torch

import VAR.sampler as sampler
from VAR import build_tiny_vae_var
from cca.layers import KVCache
from VAR.sampler import SampleTrace, generate


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_vae_var(seed=5, patch_nums=(1, 2, 3, 4), V=64, depth=3, embed_dim=64, num_heads=4)


def uncached_greedy(var, labels: torch.Tensor, cfg: float):
    """Step-by-step greedy decoding with full teacher-forced forwards (block-causal mask, no cache).

    At scale k the input holds the tokens chosen so far and placeholders (index 0) for later scales; the mask
    keeps later positions from influencing scale k, so the logits there are exactly what scale k may see."""
    quant, B, S = var.vae_quant_proxy[0], labels.shape[0], len(var.patch_nums)
    chosen, guided_all = [], []
    for si, pn in enumerate(var.patch_nums):
        padded = chosen + [torch.zeros(B, p * p, dtype=torch.long) for p in var.patch_nums[si:]]
        x = quant.idxBl_to_var_input(padded)                                   # (B, L - 1, Cvae)
        begin, end = var.begin_ends[si]
        cond = var(labels, x)[:, begin:end]                                   # (B, pn^2, V)
        if cfg != 0:
            uncond = var(torch.full_like(labels, var.num_classes), x)[:, begin:end]
            t = cfg * si / (S - 1)
            cond = (1 + t) * cond - t * uncond
        guided_all.append(cond)
        chosen.append(cond.argmax(dim=-1))                                     # (B, pn^2)
    return chosen, guided_all


@pytest.mark.parametrize("cfg", [0.0, 2.0])
def test_cached_greedy_equals_uncached_step_by_step(tiny, cfg):
    _, var = tiny
    labels = torch.tensor([0, 3, 7, 9, 10])   # 10 = unconditional class
    with torch.no_grad():
        trace = SampleTrace()
        generate(var, len(labels), labels, cfg=cfg, top_k=1, trace=trace)
        want_tokens, want_logits = uncached_greedy(var, labels, cfg)
    for si in range(len(var.patch_nums)):
        torch.testing.assert_close(trace.guided_logits[si], want_logits[si], atol=2e-5, rtol=1e-5)
        assert torch.equal(trace.tokens[si], want_tokens[si]), f"scale {si}"


def count_rows(var, **kwargs) -> list[int]:
    rows: list[int] = []
    hooks = [var.blocks[0].register_forward_pre_hook(lambda m, args, kw: rows.append(args[0].shape[0]),
                                                     with_kwargs=True),
             var.head.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))]
    try:
        generate(var, 4, torch.tensor([1, 2, 3, 4]), top_k=0, g_seed=0, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return rows


def test_guidance_free_runs_B_rows_guided_runs_2B(tiny):
    _, var = tiny
    S = len(var.patch_nums)
    assert count_rows(var, cfg=0.0) == [4] * (2 * S)
    assert count_rows(var, cfg=1.5) == [8] * (2 * S)


def test_kv_cache_is_allocated_once_at_full_length(tiny, monkeypatch):
    _, var = tiny
    made = []
    real = sampler.make_kv_cache

    def spy(model, rows):
        made.append(real(model, rows))
        return made[-1]

    monkeypatch.setattr(sampler, "make_kv_cache", spy)
    writes = []
    original_write = KVCache.write

    def recording_write(self, layer, start, k, v):
        out = original_write(self, layer, start, k, v)
        writes.append((id(self), layer, start, k.shape[2], self.k.data_ptr()))
        return out

    monkeypatch.setattr(KVCache, "write", recording_write)
    generate(var, 2, torch.tensor([1, 2]), cfg=0.0, top_k=1)
    assert len(made) == 1
    cache = made[0]
    assert cache.k.shape == (var.depth, 2, var.num_heads, var.L, var.C // var.num_heads)
    assert {w[0] for w in writes} == {id(cache)} and len({w[4] for w in writes}) == 1   # one storage throughout
    for layer in range(var.depth):   # every position of every layer written once, scale after scale
        spans = [(start, n) for _, lay, start, n, _ in writes if lay == layer]
        assert spans == [(b, e - b) for b, e in var.begin_ends]


def test_seeded_sampling_is_reproducible_and_seed_dependent(tiny):
    _, var = tiny
    a = var.autoregressive_infer_cfg(3, torch.tensor([1, 2, 3]), g_seed=7, cfg=1.0, top_k=20, top_p=0.9)
    b = var.autoregressive_infer_cfg(3, torch.tensor([1, 2, 3]), g_seed=7, cfg=1.0, top_k=20, top_p=0.9)
    c = var.autoregressive_infer_cfg(3, torch.tensor([1, 2, 3]), g_seed=8, cfg=1.0, top_k=20, top_p=0.9)
    assert a.shape == (3, 3, 8, 8) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_random_labels_int_labels_and_more_smooth(tiny):
    _, var = tiny
    t1, t2 = SampleTrace(), SampleTrace()
    generate(var, 4, None, g_seed=3, cfg=0.0, trace=t1)
    generate(var, 4, -1, g_seed=3, cfg=0.0, trace=t2)   # negative int: the unconditional class
    assert t1.tokens[0].shape == (4, 1)
    img = var.autoregressive_infer_cfg(2, 5, g_seed=1, cfg=2.0, top_k=10, more_smooth=True)
    assert img.shape == (2, 3, 8, 8) and torch.isfinite(img).all()


def test_out_of_range_labels_are_rejected(tiny):
    _, var = tiny
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\]"):
        generate(var, 2, torch.tensor([3, 11]), cfg=0.0)
    with pytest.raises(ValueError, match="label_B has 3 labels for B=2"):
        generate(var, 2, torch.tensor([1, 2, 3]), cfg=0.0)


def test_shared_adaln_model_samples_like_its_uncached_forward():
    _, var = build_tiny_vae_var(seed=9, depth=2, shared_aln=True)
    labels = torch.tensor([2, 6])
    with torch.no_grad():
        trace = SampleTrace()
        generate(var, 2, labels, cfg=1.0, top_k=1, trace=trace)
        want_tokens, _ = uncached_greedy(var, labels, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(trace.tokens, want_tokens))


def test_graphed_step_buffers_equal_the_eager_steps(tiny, monkeypatch):
    """The CUDA-graph path's static buffers and copies, run without capture (CPU), reused across runs of other
    classes and guidance as replayed graphs are, give exactly the eager path's logits and tokens."""
    from VAR.graphs import GraphedScaleSteps
    _, var = tiny
    persistent = {}

    def static_steps(model, rows, cuda_graph):
        if rows not in persistent:
            persistent[rows] = GraphedScaleSteps(model, rows, capture=False)
        return persistent[rows]

    for labels, cfg in ((torch.tensor([0, 3, 7]), 0.0), (torch.tensor([9, 1, 10]), 0.0), (torch.tensor([2, 2, 5]), 2.0),
                        (torch.tensor([4, 6, 8]), 1.0)):
        eager, graphed = SampleTrace(), SampleTrace()
        generate(var, 3, labels, cfg=cfg, top_k=1, trace=eager, cuda_graph=False)
        with monkeypatch.context() as m:
            m.setattr(sampler, "_steps", static_steps)
            generate(var, 3, labels, cfg=cfg, top_k=1, trace=graphed)
        for a, b in zip(eager.guided_logits + eager.tokens, graphed.guided_logits + graphed.tokens):
            assert torch.equal(a, b)
    assert sorted(persistent) == [3, 6]


def test_graphs_are_kept_per_shape_and_recaptured_when_weights_move(tiny, monkeypatch):
    import VAR.graphs as graphs
    _, var = tiny
    monkeypatch.setattr(graphs, "GraphedScaleSteps", lambda model, rows: object())
    a, b = graphs.graphed_scale_steps(var, 4), graphs.graphed_scale_steps(var, 4)
    assert a is b                                                         # replayed, not captured again
    c = graphs.graphed_scale_steps(var, 8)
    assert c is not a and graphs.graphed_scale_steps(var, 8) is c         # one shape kept per model
    var.head.weight = torch.nn.Parameter(var.head.weight.detach().clone())   # new storage, e.g. an assigning load
    assert graphs.graphed_scale_steps(var, 8) is not c
    graphs.drop_graphs(var)
    assert var not in graphs._GRAPHED
