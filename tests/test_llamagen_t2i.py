"""LlamaGen's text-to-image GPT: caption layout and masks, the null caption, loading, caption-conditioned generation
(CPU, tiny sizes; the checkpoint layouts are in test_llamagen_models.py, the fixture in test_parity.py)."""
from __future__ import annotations

import pytest
import torch
from fixture_utils import SHARED
from safetensors.torch import load_file

from cca.errors import UsageError
from LlamaGen import ModelArgs, Transformer, generate
from LlamaGen.captions import Caption, attention_mask, caption_attention_mask, left_pad
from LlamaGen.checkpoints import build_gpt, load_gpt_weights
from LlamaGen.generate import generate_uncached
from LlamaGen.gpt import kv_cache_for

T, D, V = 6, 12, 40                       # caption tokens, caption width, vocabulary


def tiny_t2i(**overrides) -> Transformer:
    args = dict(dim=32, n_layer=2, n_head=4, vocab_size=V, block_size=16, model_type="t2i", cls_token_num=T,
                caption_dim=D, token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0, class_dropout_prob=0.0)
    args.update(overrides)
    torch.manual_seed(1)
    model = Transformer(ModelArgs(**args))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.4)
    model.cls_embedding.uncond_embedding.normal_(0.3, 1.0)
    return model.eval()


def captions(lengths=(2, 6, 4), seed=0) -> Caption:
    """Left-padded random captions with the given numbers of real tokens."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(len(lengths), T, D, generator=g)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]           # right-padded
    return left_pad(emb, mask)


# ------------------------------------------------------------------------------------------------ caption layout
def test_left_pad_matches_the_original_sampler_and_dataset():
    """The fixture's stand-in T5 output (right-padded, non-zero pad rows) becomes the recorded LEFT-padded
    captions, both as the sampler converts a batch and as the dataset pads the stored real rows."""
    inputs = load_file(str(SHARED / "fixtures_t2i" / "llamagen_t2i_gpt" / "inputs.safetensors"))
    t5, t5_mask = inputs["t5_caption_embs"], inputs["t5_emb_masks"]
    got = left_pad(t5, t5_mask)
    assert torch.equal(got.emb, inputs["gen_caption_embs"]) and torch.equal(got.mask, inputs["gen_emb_masks"])
    for i in range(t5.shape[0]):
        stored = t5[i:i + 1, :int(t5_mask[i].sum())]                          # what feature extraction keeps
        row = left_pad(stored, torch.ones(stored.shape[:2], dtype=torch.bool), tokens=t5.shape[1])
        assert torch.equal(row.emb[0], inputs["train_caption_embs"][i])
        assert torch.equal(row.mask[0], inputs["train_emb_masks"][i])


def test_left_pad_truncates_to_the_first_tokens_and_rejects_holes():
    emb = torch.arange(8.0).reshape(1, 8, 1)
    out = left_pad(emb, torch.ones(1, 8, dtype=torch.bool), tokens=5)         # 8 stored rows, 5 tokens
    assert out.emb.flatten().tolist() == [0, 1, 2, 3, 4] and out.mask.all()
    out = left_pad(emb[:, :3], torch.ones(1, 3, dtype=torch.bool), tokens=5)
    assert out.emb.flatten().tolist() == [0, 0, 0, 1, 2] and out.mask.tolist() == [[False, False, True, True, True]]
    with pytest.raises(ValueError, match="right-padded"):
        left_pad(emb, torch.tensor([[True, False, True, True, False, False, False, False]]))


def test_attention_mask_hides_padding_columns_and_keeps_the_diagonal():
    mask = caption_attention_mask(torch.tensor([[False, False, True]]), 2)[0, 0]   # (5, 5)
    expected = torch.tensor([[1, 0, 0, 0, 0],
                             [0, 1, 0, 0, 0],
                             [0, 0, 1, 0, 0],
                             [0, 0, 1, 1, 0],
                             [0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    # one query row of it, as the cache sees it
    assert torch.equal(attention_mask(torch.tensor([[False, False, True, True, True]]), torch.tensor([3]))[0, 0, 0],
                       expected[3])


# ------------------------------------------------------------------------------------------------ the model
def test_padding_rows_do_not_matter_but_the_padding_side_does():
    model, cond = tiny_t2i(), captions()
    tokens = torch.randint(V, (3, 16), generator=torch.Generator().manual_seed(1))
    logits, _ = model(tokens[:, :-1], cond)                                     # (3, 16, V)
    assert logits.shape == (3, 16, V)
    noisy = Caption(torch.where(cond.mask[..., None], cond.emb, torch.randn_like(cond.emb)), cond.mask)
    torch.testing.assert_close(model(tokens[:, :-1], noisy)[0], logits, rtol=0, atol=0)
    # the same real tokens at the front (right padding) change the output at the last caption position
    right = Caption(cond.emb.roll(-2, dims=1), cond.mask.roll(-2, dims=1))
    assert not torch.allclose(model(tokens[:, :-1], right)[0][0, 0], logits[0, 0])


def test_caption_positions_carry_no_rotary_position():
    model = tiny_t2i()
    assert model.freqs_cis.shape == (T + 16, 32 // 4 // 2, 2)
    assert not model.freqs_cis[:T].any() and model.freqs_cis[T:, :, 0].abs().sum() > 0


def test_null_caption_is_a_buffer_and_caption_dropout_uses_it():
    model = tiny_t2i(class_dropout_prob=1.0)
    null = model.cls_embedding.uncond_embedding
    assert null.shape == (T, D) and "cls_embedding.uncond_embedding" in model.state_dict()
    assert all(p is not null for p in model.parameters())
    cond = captions()
    tokens = torch.randint(V, (3, 16), generator=torch.Generator().manual_seed(2))
    dropped = model.train()(tokens[:, :-1], cond)[0]                            # every row dropped
    as_null = model.eval()(tokens[:, :-1], model.cls_embedding.null_like(cond))[0]
    torch.testing.assert_close(dropped, as_null, rtol=0, atol=0)
    assert not torch.allclose(as_null, model(tokens[:, :-1], cond)[0])
    model.cls_embedding.dropout_prob = 0.0                                      # switches caption dropout off
    torch.testing.assert_close(model.train()(tokens[:, :-1], cond)[0], model.eval()(tokens[:, :-1], cond)[0])
    assert model.to(torch.bfloat16).cls_embedding.uncond_embedding.dtype == torch.bfloat16


def test_null_caption_keeps_each_row_mask_and_where_picks_rows():
    model, cond = tiny_t2i(), captions()
    null = model.cls_embedding.null_like(cond)
    assert torch.equal(null.mask, cond.mask) and torch.equal(null.emb[1], model.cls_embedding.uncond_embedding)
    mixed = cond.where(torch.tensor([False, True, False]), null)
    assert torch.equal(mixed.emb[0], cond.emb[0]) and torch.equal(mixed.emb[1], null.emb[1])


def test_bad_caption_inputs_fail_with_one_line():
    model, cond = tiny_t2i(), captions()
    tokens = torch.zeros(3, 15, dtype=torch.long)
    for bad, match in ((Caption(cond.emb[:, 1:], cond.mask[:, 1:]), "caption features must be float"),
                       (Caption(cond.emb, cond.mask.long()), "caption mask must be bool"),
                       (torch.tensor([0, 1, 2]), "Caption")):
        with pytest.raises(ValueError, match=match):
            model(tokens, bad)
    right = Caption(cond.emb.roll(-2, dims=1), cond.mask.roll(-2, dims=1))
    with pytest.raises(ValueError, match="LEFT-padded"):
        generate(model, right, 4)
    with pytest.raises(ValueError, match="cls_token_num"):
        tiny_t2i(cls_token_num=0)
    with pytest.raises(ValueError, match="model_type"):
        tiny_t2i(model_type="t2v")


# ------------------------------------------------------------------------------------------------ loading
def test_t2i_checkpoints_load_strictly_from_the_released_containers(tmp_path):
    kw = dict(vocab_size=V, image_size=64, downsample_size=16, num_classes=1000, gpt_type="t2i", cls_token_num=T,
              caption_dim=D)
    src = build_gpt("GPT-debug", **kw)
    for p in src.parameters():
        torch.nn.init.normal_(p)
    sd = src.state_dict()
    files = {"ddp.pt": {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "steps": 10},
             "deepspeed.pt": {"module": sd}, "lightning.pt": {"state_dict": sd},
             "with_rope.pt": {"model": {**sd, "freqs_cis": src.freqs_cis.clone()}}}
    cond, tokens = captions(), torch.randint(V, (3, 15))
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
        dst = load_gpt_weights(build_gpt("GPT-debug", device="meta", **kw), str(tmp_path / name))
        assert all(torch.equal(v, sd[k]) for k, v in dst.state_dict().items()), name
        torch.testing.assert_close(dst(tokens, cond)[0], src(tokens, cond)[0])


def test_loader_names_the_gpt_type_and_caption_sizes(tmp_path):
    kw = dict(vocab_size=V, image_size=64, downsample_size=16, num_classes=5)
    torch.save({"model": build_gpt("GPT-debug", gpt_type="t2i", cls_token_num=T, caption_dim=D, **kw).state_dict()},
               tmp_path / "t2i.pt")
    torch.save({"model": build_gpt("GPT-debug", **kw).state_dict()}, tmp_path / "c2i.pt")
    with pytest.raises(UsageError, match="text-to-image GPT: pass --gpt-type t2i"):
        load_gpt_weights(build_gpt("GPT-debug", **kw), str(tmp_path / "t2i.pt"))
    with pytest.raises(UsageError, match="class-conditional GPT: pass --gpt-type c2i"):
        load_gpt_weights(build_gpt("GPT-debug", gpt_type="t2i", **kw), str(tmp_path / "c2i.pt"))
    with pytest.raises(UsageError, match=f"{D}-d caption features, {T} caption tokens"):
        load_gpt_weights(build_gpt("GPT-debug", gpt_type="t2i", **kw), str(tmp_path / "t2i.pt"))


# ------------------------------------------------------------------------------------------------ generation
@pytest.mark.parametrize("cfg_scale,cfg_interval,n_kv_head", [(1.0, -1, None), (3.0, -1, None), (2.5, 4, None),
                                                               (3.0, -1, 2)])
def test_cached_generation_equals_teacher_forcing_recomputation(cfg_scale, cfg_interval, n_kv_head):
    model, cond = tiny_t2i(n_kv_head=n_kv_head), captions()
    logs_a, logs_b = [], []
    a = generate(model, cond, 16, cfg_scale=cfg_scale, cfg_interval=cfg_interval, sample_logits=False,
                 logits_hook=lambda i, lg: logs_a.append(lg))
    b = generate_uncached(model, cond, 16, cfg_scale=cfg_scale, cfg_interval=cfg_interval, sample_logits=False,
                          logits_hook=lambda i, lg: logs_b.append(lg))
    assert a.shape == (3, 16) and a.dtype == torch.int64 and torch.equal(a, b)
    torch.testing.assert_close(torch.stack(logs_a), torch.stack(logs_b), atol=1e-4, rtol=1e-4)


def test_guidance_mixes_with_the_null_caption_and_guidance_free_runs_conditional_rows_only():
    model, cond = tiny_t2i(), captions()
    seen: list[int] = []
    original = model.forward_cached

    def counting(x, *rest, **kw):
        seen.append(x.shape[0])
        return original(x, *rest, **kw)

    model.forward_cached = counting
    steps = {}
    for cfg in (1.0, 0.5, 4.0):
        hook_steps: list[torch.Tensor] = []
        seen.clear()
        generate(model, cond, 16, cfg_scale=cfg, top_k=1, logits_hook=lambda i, lg: hook_steps.append(lg))
        steps[cfg] = (list(seen), hook_steps[0])
    assert steps[1.0][0] == [3] * 16 and steps[0.5][0] == [3] * 16 and steps[4.0][0] == [6] * 16
    torch.testing.assert_close(steps[0.5][1], steps[1.0][1], rtol=0, atol=0)   # below 1: no guidance either
    empty = torch.zeros(3, 0, dtype=torch.long)
    c = model(empty, cond)[0][:, -1]                                            # (3, V) prefill, conditional
    u = model(empty, model.cls_embedding.null_like(cond))[0][:, -1]
    torch.testing.assert_close(steps[1.0][1], c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(steps[4.0][1], u + 4.0 * (c - u), atol=1e-4, rtol=1e-4)


def test_whole_cache_masked_form_equals_filled_prefix_with_captions():
    """What a CUDA graph replays (the whole zeroed cache under the caption key mask) equals the eager form."""
    model, cond = tiny_t2i(), captions()
    codes = torch.randint(V, (3, 8), generator=torch.Generator().manual_seed(3))
    whole, prefix = kv_cache_for(model, 3, T + 9), kv_cache_for(model, 3, T + 9, zeroed=False)
    prefix.v.fill_(float("nan"))
    whole.mask_prefix_keys(cond.mask), prefix.mask_prefix_keys(cond.mask)
    with torch.no_grad():
        emb = model.cls_embedding.embed(cond)
        a = model.forward_cached(emb, torch.arange(T), whole)
        b = model.forward_cached(emb, torch.arange(T), prefix, kv_len=T)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        for t in range(8):
            x = model.tok_embeddings(codes[:, t:t + 1])
            a = model.forward_cached(x, torch.tensor([T + t]), whole)
            b = model.forward_cached(x, torch.tensor([T + t]), prefix, kv_len=T + t + 1)
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        full, _ = model(codes, cond)
        torch.testing.assert_close(full[:, -1], b[:, -1], atol=1e-4, rtol=1e-4)


def test_generation_leaves_the_model_unchanged():
    model = tiny_t2i()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generate(model, captions(), 16, cfg_scale=3.0, top_k=5)
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
