"""LlamaGen VQ tokenizer and GPT: checkpoint layouts, loading, teacher forcing (CPU, tiny sizes)."""
from __future__ import annotations

import json

import pytest
import torch
from fixture_utils import LAYOUTS

from cca.errors import UsageError
from LlamaGen import GPT_models, ModelArgs, Transformer, VQ_models
from LlamaGen.checkpoints import build_gpt, load_gpt_weights, load_vq
from LlamaGen.vq_model import VQModel, VQModelArgs

GPT_LAYOUTS = {"B": "GPT-B", "L": "GPT-L", "XL": "GPT-XL", "XXL": "GPT-XXL", "3B": "GPT-3B"}


def _layout(name: str) -> dict:
    return json.loads((LAYOUTS / f"{name}.json").read_text())


def _assert_matches_layout(model: torch.nn.Module, layout: dict) -> None:
    sd = model.state_dict()
    want = {e["key"]: e for e in layout["state_dict"]}
    assert set(sd) == set(want), (sorted(set(sd) - set(want))[:5], sorted(set(want) - set(sd))[:5])
    assert len(sd) == layout["num_state_dict_entries"]
    for key, entry in want.items():
        assert list(sd[key].shape) == entry["shape"], key
        assert str(sd[key].dtype).replace("torch.", "") == entry["dtype"], key
    buffers = {k for k, _ in model.named_buffers()}
    assert {k for k, e in want.items() if e["kind"] == "buffer"} == buffers


@pytest.mark.parametrize("size", list(GPT_LAYOUTS))
def test_gpt_layout_matches_release(size):
    layout = _layout(f"llamagen_c2i_{size}_384")
    args = dict(layout["built_with"]["args"], class_dropout_prob=0.0)   # null row must not depend on dropout
    with torch.device("meta"):
        model = GPT_models[GPT_LAYOUTS[size]](**args)
    _assert_matches_layout(model, layout)
    assert list(model.freqs_cis.shape) == layout["built_with"]["derived"]["rope_table_shape"]
    assert model.config.ffn_hidden == layout["built_with"]["derived"]["ffn_hidden"]
    assert sum(p.numel() for p in model.parameters()) == layout["num_parameters"]


@pytest.mark.parametrize("stage", ["stage1_256", "stage2_512"])
def test_t2i_gpt_layout_matches_release(stage):
    """The released text-to-image GPT-XL: caption projection, the null caption as a BUFFER, 120 zero RoPE rows;
    built as the original's sampler builds it and as our CLIs do (``build_gpt``)."""
    layout = _layout(f"llamagen_t2i_XL_{stage}")
    built = layout["built_with"]
    with torch.device("meta"):
        model = GPT_models["GPT-XL"](**built["args"])
    _assert_matches_layout(model, layout)
    assert [k for k, _ in model.named_buffers()] == ["cls_embedding.uncond_embedding"]
    assert sum(p.numel() for p in model.parameters()) == layout["num_parameters"]
    assert sum(b.numel() for b in model.buffers()) == layout["num_buffer_elements"]
    assert list(model.freqs_cis.shape) == built["derived"]["rope_table_shape"]
    assert not model.freqs_cis[:built["args"]["cls_token_num"]].any()     # caption positions: cos = sin = 0
    assert model.config.ffn_hidden == built["derived"]["ffn_hidden"]
    image = built["derived"]["image_size"]
    cli = build_gpt("GPT-XL", vocab_size=built["model_args"]["vocab_size"], image_size=image, downsample_size=16,
                    num_classes=1000, gpt_type="t2i", device="meta")
    _assert_matches_layout(cli, layout)


@pytest.mark.parametrize("name", ["llamagen_vq_ds16_c2i", "llamagen_vq_ds16_t2i"])
def test_vq16_layout_matches_release(name):
    layout = _layout(name)
    with torch.device("meta"):
        model = VQ_models["VQ-16"](**layout["built_with"]["args"])
    _assert_matches_layout(model, layout)
    assert model.quantize.codebook_used.shape == (65536,)
    assert sum(p.numel() for p in model.parameters()) == layout["num_parameters"]


def _tiny_gpt(**overrides) -> Transformer:
    args = dict(dim=32, n_layer=2, n_head=2, vocab_size=48, block_size=16, num_classes=5, token_dropout_p=0.0,
                resid_dropout_p=0.0, ffn_dropout_p=0.0, class_dropout_prob=0.0)
    args.update(overrides)
    torch.manual_seed(0)
    model = Transformer(ModelArgs(**args))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model


def test_train_and_eval_forward_agree_without_dropout():
    model = _tiny_gpt()
    tokens, labels = torch.randint(48, (3, 16)), torch.tensor([0, 5, 2])   # 5 = null class
    logits_train, loss_train = model.train()(tokens[:, :-1], labels, targets=tokens)
    logits_eval, loss_eval = model.eval()(tokens[:, :-1], labels, targets=tokens)
    assert logits_train.shape == (3, 16, 48) and logits_train.dtype == torch.float32
    torch.testing.assert_close(logits_train, logits_eval, rtol=0, atol=0)
    ref = torch.nn.functional.cross_entropy(logits_eval.reshape(-1, 48), tokens.reshape(-1))
    torch.testing.assert_close(loss_eval, ref)
    # causal: the prediction for token i must not depend on tokens >= i
    changed = tokens.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 48
    torch.testing.assert_close(model(changed[:, :-1], labels)[0][:, :9], logits_eval[:, :9])


def test_dropout_only_in_train_mode():
    model = _tiny_gpt(resid_dropout_p=0.5, ffn_dropout_p=0.5, token_dropout_p=0.5)
    tokens, labels = torch.randint(48, (2, 16)), torch.tensor([1, 2])
    model.eval()
    a, b = model(tokens[:, :-1], labels)[0], model(tokens[:, :-1], labels)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    model.train()
    assert not torch.equal(model(tokens[:, :-1], labels)[0], a)


def test_null_row_independent_of_label_dropout():
    for p in (0.0, 0.1):
        assert _tiny_gpt(class_dropout_prob=p).cls_embedding.embedding_table.weight.shape[0] == 6
    assert _tiny_gpt(null_class_row=False).cls_embedding.embedding_table.weight.shape[0] == 5


def test_gpt_loader_accepts_release_containers(tmp_path):
    src = build_gpt("GPT-debug", vocab_size=48, image_size=64, downsample_size=16, num_classes=5)
    for p in src.parameters():
        torch.nn.init.normal_(p)
    sd = src.state_dict()
    files = {"wrapped.pt": {"model": sd}, "raw.pt": dict(sd),
             "with_rope.pt": {**sd, "freqs_cis": src.freqs_cis.clone()}}
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
        dst = build_gpt("GPT-debug", vocab_size=48, image_size=64, downsample_size=16, num_classes=5,
                        device="meta")
        load_gpt_weights(dst, str(tmp_path / name))
        for k, v in dst.state_dict().items():
            assert torch.equal(v, sd[k]), (name, k)
        tokens = torch.randint(48, (2, 16))
        torch.testing.assert_close(dst(tokens[:, :-1], torch.tensor([0, 1]))[0],
                                   src(tokens[:, :-1], torch.tensor([0, 1]))[0])


def test_gpt_loader_errors_name_the_size(tmp_path):
    src = build_gpt("GPT-debug", vocab_size=48, image_size=64, downsample_size=16, num_classes=5)
    torch.save({"model": src.state_dict()}, tmp_path / "ckpt.pt")
    wrong = build_gpt("GPT-B", vocab_size=48, image_size=64, downsample_size=16, num_classes=5, device="meta")
    with pytest.raises(UsageError, match="looks like GPT-debug; pass --gpt-model GPT-debug"):
        load_gpt_weights(wrong, str(tmp_path / "ckpt.pt"))
    wrong_vocab = build_gpt("GPT-debug", vocab_size=64, image_size=64, downsample_size=16, num_classes=5)
    with pytest.raises(UsageError, match="vocab 48"):
        load_gpt_weights(wrong_vocab, str(tmp_path / "ckpt.pt"))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="bad.pt"):
        load_gpt_weights(wrong_vocab, str(tmp_path / "bad.pt"))


def test_norms_below_32_channels_have_one_group_per_channel():
    """The released widths (>= 128) keep GroupNorm(32); the demo's 16-channel tokenizer gets GroupNorm(16)."""
    from VAR.encoder_decoder import group_norm
    narrow = VQModel(VQModelArgs(codebook_size=16, codebook_embed_dim=4, encoder_ch_mult=[1, 1],
                                 decoder_ch_mult=[1, 1], z_channels=8, ch=16, num_res_blocks=0)).eval()
    groups = {m.num_groups for m in narrow.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {16}
    with torch.no_grad():
        assert narrow.decode(narrow.encode(torch.zeros(1, 3, 8, 8))[0]).shape == (1, 3, 8, 8)
    assert (group_norm(16).num_groups, group_norm(32).num_groups, group_norm(128).num_groups) == (16, 32, 32)


def _tiny_vq() -> VQModel:
    torch.manual_seed(0)
    return VQModel(VQModelArgs(codebook_size=32, codebook_embed_dim=4, encoder_ch_mult=[1, 1, 2, 2, 4],
                               decoder_ch_mult=[1, 1, 2, 2, 4], z_channels=8, ch=32, num_res_blocks=1)).eval()


def test_vq_roundtrip_and_loader(tmp_path):
    vq = _tiny_vq()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        quant, _, (_, _, codes) = vq.encode(x)
        assert quant.shape == (2, 4, 2, 2) and codes.shape == (8,) and codes.dtype == torch.int64
        # codes pick the row with the highest cosine similarity
        z = torch.nn.functional.normalize(vq.pre_quant(x).permute(0, 2, 3, 1).reshape(-1, 4), dim=-1)
        rows = torch.nn.functional.normalize(vq.quantize.embedding.weight, dim=-1)
        assert torch.equal(codes, (z @ rows.t()).argmax(1))
        torch.testing.assert_close(vq.decode_code(codes.reshape(2, 4), [2, 4, 2, 2]), vq.decode(quant),
                                   atol=1e-4, rtol=1e-4)   # quant carries straight-through rounding
    torch.save({"model": vq.state_dict()}, tmp_path / "vq.pt")
    loaded = load_vq(str(tmp_path / "vq.pt"), "VQ-16", 32, 4)
    assert loaded.config.ch == 32 and loaded.config.num_res_blocks == 1 and loaded.config.z_channels == 8
    with pytest.raises(UsageError, match="--codebook-size 32 --codebook-embed-dim 4"):
        load_vq(str(tmp_path / "vq.pt"), "VQ-16", 16384, 8)
    with pytest.raises(UsageError, match="--vq-model VQ-16"):
        load_vq(str(tmp_path / "vq.pt"), "VQ-8", 32, 4)
