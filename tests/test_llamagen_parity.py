"""LlamaGen.parity reproduces the shipped llamagen_vq / llamagen_gpt / llamagen_t2i_gpt fixtures within their
tolerances, and fixtures of the same kinds with other sizes."""
from __future__ import annotations

import json
import subprocess
import sys

import torch
from fixture_utils import FIXTURES, REPO, SHARED, compare_with_expected, fixture_config
from safetensors.torch import load_file, save_file

from cca.parity import compute_fixture
from LlamaGen import ModelArgs, Transformer
from LlamaGen.captions import Caption, caption_attention_mask, left_pad
from LlamaGen.parity import cfg_tag


def test_gpt_fixture_covers_every_cfg():
    config = fixture_config(FIXTURES / "llamagen_gpt")
    expected = load_file(str(FIXTURES / "llamagen_gpt" / "expected.safetensors"))
    for cfg in config["calls"]["generation"]["cfg_scale"]:
        assert f"generated_tokens_{cfg_tag(float(cfg))}" in expected
    assert cfg_tag(1.5) == "cfg1p5" and cfg_tag(4.0) == "cfg4"


def test_parity_cli(tmp_path):
    out = tmp_path / "gpt.safetensors"
    subprocess.run([sys.executable, "-m", "cca.parity", str(FIXTURES / "llamagen_gpt"), "--out", str(out)],
                   cwd=REPO, check=True, capture_output=True, timeout=120)
    compare_with_expected(FIXTURES / "llamagen_gpt", load_file(str(out)))


def test_t2i_parity_cli(tmp_path):
    folder = SHARED / "fixtures_t2i" / "llamagen_t2i_gpt"
    out = tmp_path / "t2i.safetensors"
    subprocess.run([sys.executable, "-m", "cca.parity", str(folder), "--out", str(out)],
                   cwd=REPO, check=True, capture_output=True, timeout=120)
    compare_with_expected(folder, load_file(str(out)))


def _t2i_fixture_of_other_sizes(folder, model, lengths, drop_rows, cfgs) -> dict:
    """A llamagen_t2i_gpt folder for ``model`` (any sizes), its expectations from the slow references."""
    from LlamaGen.generate import generate_uncached
    T, L = model.cls_token_num, model.block_size
    g = torch.Generator().manual_seed(5)
    right = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    captions = left_pad(torch.randn(len(lengths), T, model.config.caption_dim, generator=g), right)
    tokens = torch.randint(model.vocab_size, (len(lengths), L), generator=g)
    valid = torch.ones(len(lengths), dtype=torch.long)
    valid[-1] = 0
    inputs = {"train_caption_embs": captions.emb, "train_emb_masks": captions.mask, "tokens": tokens,
              "train_attn_mask": caption_attention_mask(captions.mask, L), "train_valid": valid,
              "caption_drop_rows": torch.tensor(drop_rows), "gen_caption_embs": captions.emb[:2].clone(),
              "gen_emb_masks": captions.mask[:2].clone()}
    null = model.cls_embedding.uncond_embedding
    dropped = Caption(torch.where(inputs["caption_drop_rows"][:, None, None], null, captions.emb), captions.mask)
    expected = {}
    for suffix, cond in (("", captions), ("_caption_dropout", dropped)):
        logits, _ = model(tokens[:, :-1], cond)
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens, reduction="none").mean(1)
        expected[f"teacher_forced_logits{suffix}"] = logits
        expected[f"teacher_forced_ce_loss{suffix}"] = (ce * valid).sum().reshape(1) / valid.sum()
    for cfg in cfgs:
        steps = []
        expected[f"generated_tokens_{cfg_tag(cfg)}"] = generate_uncached(
            model, Caption(captions.emb[:2], captions.mask[:2]), L, cfg_scale=cfg, top_k=1,
            logits_hook=lambda i, lg: steps.append(lg))
        expected[f"generation_step_logits_{cfg_tag(cfg)}"] = torch.stack(steps, dim=1)
    args = {k: getattr(model.config, k) for k in ("dim", "n_layer", "n_head", "n_kv_head", "vocab_size",
                                                   "block_size", "cls_token_num", "caption_dim", "model_type")}
    config = {"fixture": "llamagen_t2i_gpt", "constructor_args": {"ModelArgs": {**args, "class_dropout_prob": 0.1}},
              "calls": {"generation": {"max_new_tokens": L, "cfg_scale": cfgs, "top_k": 1}},
              "tolerance": {"suggested_atol_float": 1e-4}}
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    save_file(model.state_dict(), str(folder / "weights.safetensors"))
    save_file(inputs, str(folder / "inputs.safetensors"))
    save_file({k: v.contiguous() for k, v in expected.items()}, str(folder / "expected.safetensors"))
    return expected


def test_t2i_parity_kind_takes_every_size_from_the_fixture(tmp_path):
    """Another caption length and width, grid, GQA and cfg list: the kind reads them all from the folder."""
    torch.manual_seed(3)
    model = Transformer(ModelArgs(dim=32, n_layer=1, n_head=4, n_kv_head=2, vocab_size=30, block_size=9,
                                  model_type="t2i", cls_token_num=5, caption_dim=7, class_dropout_prob=0.0,
                                  token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    model.eval()
    with torch.no_grad():
        _t2i_fixture_of_other_sizes(tmp_path / "fx", model, [2, 5, 3], [True, False, False], [1.0, 2.5])
    compare_with_expected(tmp_path / "fx", compute_fixture(tmp_path / "fx"))
