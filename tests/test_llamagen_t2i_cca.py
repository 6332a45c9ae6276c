"""CCA on captions: ids that roll captions (features and masks together), identical captions as positives, the
learned null caption under each row's own mask, one trainer step; then end to end on CPU with 2 processes:
T5 features -> codes -> fine-tune (DDP and FSDP) -> prompt sampler (guidance-free and CFG)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from fixture_utils import REPO
from llamagen_tiny import EMBED, IMAGE, VOCAB, make_assets

from cca.conditions import make_conditions
from cca.errors import UsageError
from cca.train_config import TrainConfig
from cca.trainer import Trainer
from demo_t2i.text_encoder import build_t5
from LlamaGen.captions import Caption
from LlamaGen.checkpoints import build_gpt
from LlamaGen.sample_t2i import main as sample_t2i, read_prompts
from LlamaGen.t2i_adapter import T2IAdapter, same_caption_ids

T, D, L = 6, 16, 16
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
WORDS = "a photo of red blue dog cat shoe bag small".split()
CAPTIONS = ["a photo of a red dog", "a blue cat", "a small shoe", "a blue cat", "photo of a bag", "a red bag"]


def _gpt(**kw):
    torch.manual_seed(0)
    gpt = build_gpt("GPT-debug", vocab_size=VOCAB, image_size=IMAGE, downsample_size=16, num_classes=1000,
                    gpt_type="t2i", cls_token_num=T, caption_dim=D, **kw)
    for p in gpt.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return gpt


def _batch(lengths=(2, 6, 4, 6, 3), repeat=(3, 2)):
    """codes (B, L), left-padded features (B, T, D), masks (B, T); row repeat[0] is a copy of row repeat[1]."""
    g = torch.Generator().manual_seed(0)
    B = len(lengths)
    emb, mask = torch.zeros(B, T, D), torch.zeros(B, T, dtype=torch.bool)
    for i, n in enumerate(lengths):
        emb[i, T - n:] = torch.randn(n, D, generator=g)
        mask[i, T - n:] = True
    emb[repeat[0]], mask[repeat[0]] = emb[repeat[1]], mask[repeat[1]]
    return torch.randint(0, VOCAB, (B, L), generator=g), emb, mask


def test_ids_name_the_first_identical_caption_features_and_mask_alike():
    _, emb, mask = _batch()
    assert same_caption_ids(Caption(emb, mask)).tolist() == [0, 1, 2, 2, 4]
    mask2 = mask.clone()
    mask2[3, 0] = True                      # same features (zero there), other mask: another caption
    assert same_caption_ids(Caption(emb, mask2)).tolist() == [0, 1, 2, 3, 4]


def test_negatives_are_rolled_captions_and_a_rolled_copy_counts_as_positive():
    codes, emb, mask = _batch(lengths=(2, 6, 6, 4, 3), repeat=(2, 1))
    adapter, model = T2IAdapter(8), _gpt()
    ids, inputs, targets = adapter.prepare((codes, emb, mask), torch.device("cpu"))
    assert torch.equal(inputs, codes[:, :-1]) and torch.equal(targets, codes)
    cond = make_conditions(ids, adapter.num_classes, uncond_ratio=0.5,
                           uniform_draws=torch.tensor([0.9, 0.9, 0.9, 0.1, 0.9]))
    neg = adapter.captions(model, cond.neg, inputs)
    keep = ~cond.null_rows
    assert torch.equal(neg.emb[keep], emb.roll(-1, 0)[keep]) and torch.equal(neg.mask[keep], mask.roll(-1, 0)[keep])
    # row 1's rolled caption is row 2's, an identical copy: a positive pair, like equal labels; row 3 is null
    assert cond.neg_is_positive.tolist() == [False, True, False, True, False]
    pos = adapter.captions(model, cond.pos, inputs)
    null = model.cls_embedding.uncond_embedding
    assert torch.equal(pos.emb[3], null) and torch.equal(pos.mask[3], mask[3])      # null under its own mask
    assert torch.equal(pos.emb[keep], emb[keep]) and torch.equal(pos.mask, mask)


def test_null_rows_find_their_own_mask_in_any_order_of_rows():
    codes, emb, mask = _batch()
    adapter, model = T2IAdapter(5), _gpt()
    _, inputs, _ = adapter.prepare((codes, emb, mask), torch.device("cpu"))
    rows = torch.tensor([4, 0, 2])
    got = adapter.captions(model, torch.full((3,), 5), inputs[rows])
    assert torch.equal(got.mask, mask[rows])
    assert torch.equal(got.emb, model.cls_embedding.uncond_embedding.expand(3, -1, -1))
    with pytest.raises(ValueError, match="not in the prepared batch"):
        adapter.captions(model, torch.full((1,), 5), torch.full((1, L - 1), VOCAB))


def test_one_trainer_step_moves_the_policy_and_never_the_null_caption(tmp_path):
    codes, emb, mask = _batch()
    policy, reference = _gpt(), _gpt()
    null = policy.cls_embedding.uncond_embedding.clone()
    before = policy.cls_embedding.cap_proj.fc1.weight.detach().clone()
    cfg = TrainConfig(out_dir=str(tmp_path), batch_size=5, loss_type="CCA", beta=0.1, lambda_=1.0,
                      uncond_ratio=0.4, lr=1e-2, weight_decay=0.0, epochs=1, parallel="none", num_workers=0)
    trainer = Trainer(policy, reference, T2IAdapter(5), cfg)
    metrics = trainer.train_step((codes, emb, mask))
    assert torch.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    assert not torch.equal(policy.cls_embedding.cap_proj.fc1.weight, before)
    assert torch.equal(policy.cls_embedding.uncond_embedding, null)


def test_prompt_files_lines_or_json_with_ids(tmp_path):
    lines = tmp_path / "p.txt"
    lines.write_text("a red dog\n\n  a blue cat \n")
    assert read_prompts(str(lines)) == (["0", "1"], ["a red dog", "a blue cat"])
    js = tmp_path / "p.json"
    js.write_text(json.dumps([{"id": "x7", "prompt": "a bag"}, {"id": 3, "prompt": "a shoe"}]))
    assert read_prompts(str(js)) == (["x7", "3"], ["a bag", "a shoe"])
    js.write_text(json.dumps([{"id": 1, "text": "a bag"}]))
    with pytest.raises(UsageError, match=r"--prompts .*item 0"):
        read_prompts(str(js))
    lines.write_text("\n \n")
    with pytest.raises(UsageError, match="--prompts .*no prompts"):
        read_prompts(str(lines))


# ------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i_e2e")
    paths = {**make_assets(root), "root": root, "t5": build_t5(root / "t5", WORDS, D)}
    images = sorted((root / "images").rglob("*.png"))
    (root / "listing").mkdir()
    (root / "listing" / "part0.jsonl").write_text("".join(
        json.dumps({"image_path": str(p), "text": [c, "unused"]}) + "\n" for p, c in zip(images, CAPTIONS)))
    torch.save({"model": _gpt().state_dict()}, root / "t2i_ref.pt")
    return paths


def _torchrun(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])


def _finetune(assets, script: str, expid: str) -> None:
    r = assets["root"]
    _torchrun([script, "--gpt-type", "t2i", "--data-path", str(r / "listing"), "--t5-feat-path", str(r / "feats"),
               "--code-path", str(r / "codes"), "--cls-token-num", str(T), "--gpt-model", "GPT-debug",
               "--vocab-size", str(VOCAB), "--image-size", str(IMAGE), "--global-batch-size", "6",
               "--gradient-accumulation-step", "1", "--epochs", "2", "--max-steps", "2", "--lr", "1e-3",
               "--loss_type", "CCA", "--lambda_", "10", "--beta", "0.1", "--uncond_ratio", "0.3", "--expid", expid,
               "--ref_ckpt", str(r / "t2i_ref.pt"), "--results-dir", str(r / "results"), "--num-workers", "0",
               "--log-every", "1", "--mixed-precision", "none"])


def _sample(assets, ckpt, prompts, cfg_scale: str) -> dict:
    out = assets["root"] / "samples"
    sample_t2i(["--prompts", str(prompts), "--samples-per-prompt", "2", "--t5-model-path", str(assets["t5"]),
                "--t5-feature-max-len", "8", "--gpt-model", "GPT-debug", "--gpt-ckpt", str(ckpt), "--cls-token-num",
                str(T), "--vq-ckpt", str(assets["vq"]), "--codebook-size", str(VOCAB), "--codebook-embed-dim",
                str(EMBED), "--image-size", str(IMAGE), "--image-size-eval", "32", "--per-proc-batch-size", "3",
                "--cfg-scale", cfg_scale, "--top-k", "0", "--sample-dir", str(out), "--save-png"])
    (npz,) = [p for p in out.glob("*.npz") if f"cfg-{float(cfg_scale)}" in p.name and ckpt.stem in p.name]
    with np.load(npz) as f:
        return {k: f[k] for k in f.files} | {"name": npz.stem}


def test_features_codes_finetune_and_sample_end_to_end(assets):
    r = assets["root"]
    _torchrun(["LlamaGen/extract_t5_features.py", "--data-path", str(r / "listing"), "--t5-path", str(r / "feats"),
               "--t5-model-path", str(assets["t5"]), "--t5-feature-max-len", "8", "--precision", "none"])
    _torchrun(["LlamaGen/extract_codes_c2i.py", "--vq-ckpt", str(assets["vq"]), "--data-path", str(r / "listing"),
               "--code-path", str(r / "codes"), "--image-size", str(IMAGE), "--codebook-size", str(VOCAB),
               "--codebook-embed-dim", str(EMBED), "--num-workers", "0"])
    assert len(list((r / "feats" / "part0").glob("*.npy"))) == len(list((r / "codes" / "part0").glob("*.npy"))) == 6
    _finetune(assets, "LlamaGen_finetune.py", "ddp")
    _finetune(assets, "LlamaGen_finetune_fsdp.py", "fsdp")
    ddp = torch.load(next((r / "results").glob("*-ddp-GPT-debug/checkpoints/0000002.pt")), weights_only=True)
    fsdp_file = next((r / "results").glob("*-fsdp-GPT-debug/checkpoints/0000002.pt"))
    ref = _gpt().state_dict()
    assert not torch.equal(ddp["model"]["cls_embedding.cap_proj.fc1.weight"], ref["cls_embedding.cap_proj.fc1.weight"])
    assert torch.equal(ddp["model"]["cls_embedding.uncond_embedding"], ref["cls_embedding.uncond_embedding"])

    prompts = r / "prompts.json"
    prompts.write_text(json.dumps([{"id": "dog", "prompt": "a red dog"}, {"id": "cat", "prompt": "a blue cat"},
                                   {"id": "bag", "prompt": "a small bag"}]))
    free = _sample(assets, fsdp_file, prompts, "1.0")
    guided = _sample(assets, fsdp_file, prompts, "4.0")
    for out in (free, guided):
        assert out["arr_0"].shape == (6, 32, 32, 3) and out["arr_0"].dtype == np.uint8
        assert out["arr_1"].tolist() == [0, 0, 1, 1, 2, 2]
        assert out["ids"].tolist() == ["dog", "dog", "cat", "cat", "bag", "bag"]
        assert len(list((r / "samples" / out["name"]).glob("*.png"))) == 6
    assert not np.array_equal(free["arr_0"], guided["arr_0"])
    _torchrun(["LlamaGen/sample_t2i.py", "--prompts", str(prompts), "--samples-per-prompt", "2", "--t5-model-path",
               str(assets["t5"]), "--t5-feature-max-len", "8", "--gpt-model", "GPT-debug", "--gpt-ckpt",
               str(fsdp_file), "--cls-token-num", str(T), "--vq-ckpt", str(assets["vq"]), "--codebook-size",
               str(VOCAB), "--codebook-embed-dim", str(EMBED), "--image-size", str(IMAGE), "--image-size-eval", "32",
               "--per-proc-batch-size", "2", "--cfg-scale", "4.0", "--top-k", "0",
               "--sample-dir", str(r / "samples2")])
    with np.load(next((r / "samples2").glob("*.npz"))) as two:
        assert two["arr_0"].shape == (6, 32, 32, 3) and two["ids"].tolist() == guided["ids"].tolist()
        assert two["arr_1"].tolist() == [0, 0, 1, 1, 2, 2] and len(np.unique(two["arr_0"], axis=0)) == 6


def test_t2i_flags_fail_with_one_line(assets, tmp_path):
    from LlamaGen.finetune_cli import main as finetune
    base = ["--ref_ckpt", str(assets["root"] / "t2i_ref.pt"), "--code-path", str(tmp_path), "--gpt-model",
            "GPT-debug", "--vocab-size", str(VOCAB), "--image-size", str(IMAGE), "--results-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match="--gpt-type t2i needs --data-path and --t5-feat-path"):
        finetune([*base, "--gpt-type", "t2i"])
    with pytest.raises(SystemExit, match="--t5-feat-path .*folder not found"):
        finetune([*base, "--gpt-type", "t2i", "--data-path", str(tmp_path), "--t5-feat-path", str(tmp_path / "no")])
    (tmp_path / "p.txt").write_text("a dog\n")
    with pytest.raises(SystemExit, match="--t5-model-type flan-t5-xl: could not fetch google/flan-t5-xl"):
        sample_t2i(["--prompts", str(tmp_path / "p.txt"), "--gpt-model", "GPT-debug", "--gpt-ckpt",
                    str(assets["root"] / "t2i_ref.pt"), "--vq-ckpt", str(assets["vq"])])
