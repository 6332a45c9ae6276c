"""The dry-run planner on text-to-image LlamaGen (LlamaGen/plan.py, LlamaGen/plan_t2i.py): its activation counts
equal what autograd saves for a caption-conditioned GPT, its FLOPs what torch counts, and --gpt-type t2i
--dry-run of both fine-tunes and sample_t2i.py --dry-run describe the real T2I GPT (and the sampler's T5 encoder)
without loading more data than a count and the first record, with one-line errors on bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from llamagen_tiny import IMAGE, TINY_FLAGS, VOCAB
from test_plan import saved_bytes
from torch.utils.flop_counter import FlopCounterMode

from cca.loss import sequence_logprob
from LlamaGen.captions import Caption
from LlamaGen.checkpoints import build_gpt
from LlamaGen.gpt import ModelArgs, Transformer
from LlamaGen.plan import activations, gpt_net

T, D = 7, 40


def _t2i(dropout: float = 0.0, **kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelArgs(**{**dict(dim=96, n_layer=2, n_head=3, vocab_size=64, block_size=64,
                                           class_dropout_prob=0.0, token_dropout_p=dropout, resid_dropout_p=dropout,
                                           ffn_dropout_p=dropout, model_type="t2i", cls_token_num=T,
                                           caption_dim=D), **kw}))


def _caption(n: int, lengths=(7, 5, 4, 6, 1)) -> Caption:
    mask = torch.arange(T)[None, :] >= T - torch.tensor(lengths[:n])[:, None]    # (n, T) left-padded
    return Caption(torch.randn(n, T, D) * mask[..., None], mask)


@pytest.mark.parametrize("precision", ["fp32", "amp", "half"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_t2i_saved_activations_match_autograd(precision, dropout):
    model = _t2i(dropout).train()
    model = model.to(torch.bfloat16) if precision == "half" else model
    cfg, N = model.config, 5
    L = cfg.block_size
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "amp"):
        logits = model(torch.randint(64, (N, L - 1)), _caption(N))[0]
    assert logits.shape == (N, L, 64)
    got = saved_bytes(sequence_logprob(logits, torch.randint(64, (N, L))).sum(), list(model.parameters()))
    act = activations(cfg, precision, "cpu")
    cast = 2 * gpt_net(model).linear_params if precision == "amp" else 0      # fc1's cast weight is not kept
    want = N * L * (act.saved_per_token + 4 * cfg.vocab_size + 4) + N * act.saved_per_row + cast
    assert want == pytest.approx(got, rel=0.01)
    # the caption positions are a real share of it: a c2i count of the same image tokens misses them
    c2i = activations(ModelArgs(**{**vars(cfg), "model_type": "c2i", "cls_token_num": 1}), precision, "cpu")
    assert N * L * (c2i.saved_per_token + 4 * cfg.vocab_size + 4) + N * c2i.saved_per_row + cast < 0.93 * got


def test_t2i_flops_match_torch_flop_counter():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    model = _t2i(dim=64, n_head=4, vocab_size=128, block_size=36).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(torch.randint(128, (1, 35)), _caption(1))
    # under a caption's mask every query-key pair is computed, as the planner counts them
    assert gpt_net(model).flops_per_row == pytest.approx(counter.get_total_flops(), rel=0.01)


def write_t2i_data(root, n: int, tokens: int = 16, dim: int = 24):
    """A listing of n records, their codes and T5 features (2-5 real caption rows of width ``dim``)."""
    rng = np.random.default_rng(0)
    (root / "data").mkdir(parents=True)
    (root / "data" / "part0.jsonl").write_text("".join(json.dumps({"text": [f"caption {i}"]}) + "\n"
                                                       for i in range(n)))
    for kind in ("codes", "feats"):
        (root / kind / "part0").mkdir(parents=True)
    for i in range(n):
        np.save(root / "codes" / "part0" / f"{i}.npy", rng.integers(0, VOCAB, (1, tokens), dtype=np.int64))
        np.save(root / "feats" / "part0" / f"{i}.npy", rng.standard_normal((1, 2 + i % 4, dim)).astype(np.float32))
    return ["--data-path", str(root / "data"), "--code-path", str(root / "codes"), "--t5-feat-path",
            str(root / "feats")]


def _params(caption_dim: int, tokens: int) -> int:
    gpt = build_gpt("GPT-debug", vocab_size=VOCAB, image_size=IMAGE, downsample_size=16, num_classes=3,
                    gpt_type="t2i", cls_token_num=tokens, caption_dim=caption_dim)
    return sum(p.numel() for p in gpt.parameters())


@pytest.mark.parametrize("fsdp", [False, True])
def test_t2i_finetune_dry_run_plans_the_caption_gpt(tmp_path, capsys, monkeypatch, fsdp):
    from LlamaGen.finetune_cli import main
    from LlamaGen.t2i_data import CaptionCodeDataset

    def no_items(self, idx):
        raise AssertionError("the dry run read a training item")
    monkeypatch.setattr(CaptionCodeDataset, "__getitem__", no_items)
    monkeypatch.setattr(CaptionCodeDataset, "check_vocab", no_items)
    flags = [*TINY_FLAGS, "--ref_ckpt=/no/t2i.pt", "--gpt-type", "t2i", "--cls-token-num", "6",
             "--global-batch-size", "4", "--dry-run", "--gpus", "2"]
    main([*flags, *write_t2i_data(tmp_path, 20)], fsdp=fsdp)
    text = capsys.readouterr().out
    assert "6 caption tokens of width 24 + 16 image tokens: 21 positions per row" in text
    assert f"({_params(24, 6):,} each)" in text and _params(24, 6) != _params(2048, 6)
    assert "20 training items in --data-path" in text and "steps per epoch: 5 (global batch 4)" in text
    main([*flags, "--data-path=/no/data", "--code-path=/no/codes", "--t5-feat-path=/no/feats"], fsdp=fsdp)
    text = capsys.readouterr().out
    assert "assuming ImageNet's 1,281,167 images and 2048-d caption features" in text
    assert f"({_params(2048, 6):,} each)" in text


def test_t2i_plan_counts_captions_in_the_batch_and_the_sampler_cache():
    from LlamaGen.plan import gpt_finetune, gpt_sampling
    from LlamaGen.vq_model import VQModel, VQModelArgs
    t2i, c2i = _t2i(), Transformer(ModelArgs(dim=96, n_layer=2, n_head=3, vocab_size=64, block_size=64))
    run = dict(precision="fp32", mode="ddp", world=1, shard=1, micro=2, accum=1, joint=False, device="cpu")
    assert (gpt_finetune(t2i, **run).batch_bytes_per_row - gpt_finetune(c2i, **run).batch_bytes_per_row
            == T * (4 * D + 1))                                  # fp32 features and a bool mask per caption row
    with torch.device("meta"):
        vq = VQModel(VQModelArgs(codebook_size=64, codebook_embed_dim=8, ch=32, num_res_blocks=1, z_channels=32))
    kw = dict(half=True, guided=False, batch=4, world=1, num_samples=4)
    a, b = gpt_sampling(t2i, vq, encoder_bytes=10**6, **kw), gpt_sampling(c2i, vq, **kw)
    assert a.cache_bytes_per_row - b.cache_bytes_per_row == 2 * 2 * 96 * 2 * (T - 1)   # layers, k+v, dim, bf16
    assert a.weight_bytes - b.weight_bytes == 2 * (gpt_net(t2i).params - gpt_net(c2i).params) + 10**6


def _t5_folder(root, width: int = 16):
    import transformers
    config = transformers.T5Config(vocab_size=50, d_model=width, d_kv=4, num_heads=2, num_layers=1, d_ff=32,
                                   feed_forward_proj="gated-gelu")
    config.save_pretrained(root / "t5")
    with torch.device("meta"):
        t5 = transformers.T5EncoderModel(config)
    return root / "t5", sum(p.numel() for p in t5.parameters())


SAMPLE_FLAGS = ["--gpt-model", "GPT-debug", "--gpt-ckpt", "/no/t2i.pt", "--vq-ckpt", "/no/vq.pt", "--image-size",
                str(IMAGE), "--codebook-size", str(VOCAB), "--codebook-embed-dim", "4", "--cls-token-num", "6",
                "--per-proc-batch-size", "2", "--precision", "bf16", "--dry-run", "--gpus", "2"]


def test_t2i_sampler_dry_run_counts_the_t5_encoder(tmp_path, capsys):
    from LlamaGen.sample_t2i import main
    t5, t5_params = _t5_folder(tmp_path)
    (tmp_path / "p.txt").write_text("a red dog\na blue cat\nsmall shoe\n")
    main([*SAMPLE_FLAGS, "--prompts", str(tmp_path / "p.txt"), "--samples-per-prompt", "3", "--t5-model-path",
          str(t5), "--cfg-scale", "1"])
    text = capsys.readouterr().out
    assert "[dry run] sample_t2i.py: GPT-debug t2i" in text and "3 prompts in --prompts" in text
    assert f"({t5_params:,} parameters from {t5}/config.json, 16-d captions)" in text
    assert "9 samples, 2 per batch per process, 2 process(es), guidance-free" in text
    assert "batches per process: 3" in text and "nothing was allocated" in text
    main([*SAMPLE_FLAGS, "--prompts", "/no/p.txt"])     # hub defaults: FLAN-T5-XL, not downloaded
    text = capsys.readouterr().out
    assert "planning one batch per process" in text and "4 samples" in text and "guided" in text
    assert "(1,223,527,424 parameters from google/flan-t5-xl's published config, 2048-d captions)" in text


@pytest.mark.parametrize("flags, message", [
    (["--cls-token-num", "0"], "--cls-token-num must be >= 1"),
    (["--cfg-scale", "0.5"], "--cfg-scale must be >= 1"),
    (["--per-proc-batch-size", "0"], "--per-proc-batch-size must be >= 1"),
    (["--gpus", "two"], "--gpus: expected N or NODESxPER_NODE"),
    (["--t5-model-path", "/no/t5"], "--t5-model-path /no/t5: no T5 model there"),
    (["--prompts", "BAD"], "not a JSON list"),
])
def test_t2i_sampler_dry_run_refuses_bad_input_in_one_line(tmp_path, flags, message):
    from LlamaGen.sample_t2i import main
    bad = tmp_path / "bad.json"
    bad.write_text("[{\"id\": 1,")
    argv = [*SAMPLE_FLAGS, "--prompts", str(tmp_path / "none.txt"), *flags]
    with pytest.raises(SystemExit) as e:
        main([str(bad) if a == "BAD" else a for a in argv])
    assert message in str(e.value.code) and "\n" not in str(e.value.code)
